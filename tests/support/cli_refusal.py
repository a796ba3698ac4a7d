"""Run one of our command lines on bad input, as a user would, and check that it is refused the way we promise.

``refused(module, args, tmp)`` runs ``python -m module args`` in a subprocess with its own ``RAY_TMPDIR`` and asserts
exit code 2, exactly one stderr line that starts with ``error:``, and that no Ray session was started (Ray writes its
session directory under ``RAY_TMPDIR`` first thing). It returns the line for the caller's own checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def refused(module: str, args: Sequence[str], tmp: Path, timeout: float = 120.0) -> str:
    """The one ``error:`` line of ``python -m module args``, after asserting exit 2 and that Ray never started."""
    ray_tmp = tmp / "ray-tmp"
    ray_tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmp)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert not any(ray_tmp.iterdir()), f"Ray was started: {sorted(p.name for p in ray_tmp.iterdir())}"
    return lines[0]
