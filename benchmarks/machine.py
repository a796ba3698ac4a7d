"""What the benchmarks ran on, and writing their JSON: shared by the scripts in this folder (on sys.path as theirs)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def write_results(path: Path, result: dict) -> None:
    """Write a benchmark's results as indented JSON (making the folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    path = path.resolve()
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
