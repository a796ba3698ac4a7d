"""What a person sees of the sweep on a console: its --help, and its progress (a bar on a terminal, lines in a log)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from evaluation.config import SweepConfig
from evaluation.sweep import Progress
from pipeline.cli import flag, leaves

ROOT = Path(__file__).resolve().parents[2]


def test_help_is_grouped_with_readable_metavars_and_no_empty_defaults():
    proc = subprocess.run([sys.executable, "-m", "evaluation.sweep", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "(default: none)" not in text.lower() and "(default: )" not in text
    groups = ["what to evaluate:", "where the results go:", "how it runs:"]
    assert [text.index(g) for g in groups] == sorted(text.index(g) for g in groups)
    for name in leaves(SweepConfig):
        assert flag(name) in text
    assert "--methods METHOD [METHOD ...]" in text and "{dense,multicrop}" not in text
    assert "--flip {auto,on,off}" in text and "(default: auto)" in text
    # Defaults that say something are still shown, once.
    assert "(default: val)" in text and "(default: verydeep-eval)" in text
    assert all(block.count("(default") <= 1 for block in re.split(r"\n  --", text))


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_log():
    bar = Terminal()
    progress = Progress(units=3, images=30, stream=bar)
    for i in range(3):
        progress.update(10, f"A/256 Q=256 shard {i}")
    progress.close()
    out = bar.getvalue()
    assert "\r" in out and "sweep: 100%" in out and "30/30" in out and "img/s" in out and "3/3 units" in out

    log = io.StringIO()  # not a terminal: no carriage returns, a line per `every` seconds and one for the last unit
    progress = Progress(units=3, images=30, every=3600, stream=log)
    for i in range(3):
        progress.update(10, f"A/256 Q=256 shard {i}")
    progress.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 1
    assert lines[0].startswith("sweep: 3/3 units, 30/30 images") and "left" in lines[0]
