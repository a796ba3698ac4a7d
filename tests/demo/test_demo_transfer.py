"""`make demo-transfer` in a reduced form: every stage runs quietly and the table has its four rows.

No order of the rows is asserted: measured on the demo's own data (10 labelled images per class, 6 random splits), the
FC7 features of the net trained on digits 0-4 scored 60-71 % mean class recall by checkpoint against 62-67 % for
random-init twins, with a spread of 4-8 points between splits: the net's 5-class FC7 does not transfer to 5 other
digits robustly better than random features of the same net."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("(a) features of the net trained on 0-4 + linear SVM", "(b) the same net at random init + linear SVM",
        "(c) fine-tuned from the 0-4 net, every layer", "(c) fine-tuned from the 0-4 net, conv layers frozen")


def test_reduced_transfer_demo_prints_its_table(tmp_path):
    cmd = [sys.executable, "-m", "demo.transfer", "--out", str(tmp_path / "demo"), "--per-class", "10", "--epochs",
           "8", "--finetune-epochs", "4"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for n in range(1, 8):
        assert f"== {n}/7 " in proc.stdout
    assert "### Transfer: net A trained on digits 0-4, used on digits 5-9 (10 labelled images per class" in proc.stdout
    values = {}
    for row in ROWS:
        match = re.search(re.escape(f"| {row} | ") + r"([0-9.]+) \|", proc.stdout)
        assert match, (row, proc.stdout[-3000:])
        values[row] = float(match.group(1))
        assert 0.0 <= values[row] <= 100.0
    # Quiet: the stages' own output (Ray's included) stays in the logs.
    assert len(proc.stdout.splitlines()) < 60 and "INFO" not in proc.stdout, proc.stdout
