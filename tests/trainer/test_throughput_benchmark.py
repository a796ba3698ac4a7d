"""benchmarks/train_throughput.py still runs end to end: the smoke job's logged rates, then the step with each feed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_quick_runs(tmp_path):
    out = tmp_path / "throughput.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--quick", "--json",
                          str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    job = result["smoke_job"]
    # The job's own MLflow metrics came back: a rate, and a wait fraction that is a fraction.
    assert job["images_per_s_median"] > 0 and 0 <= job["data_wait_fraction_median"] <= 1
    assert job["net"]["model.arch"] == "A" and job["synthetic_in_memory"]["images_per_s"] > 0
    feeds = result["step"]["feeds"]
    assert set(feeds) == {"synthetic", "ours", "torchvision"}
    for v in feeds.values():
        assert v["images_per_s"] > 0 and 0 <= v["data_wait_fraction"] <= 1
    # Synthetic batches cost the loop nothing to fetch; the decoder is the one "auto" picks for this device.
    assert feeds["synthetic"]["data_wait_fraction"] < feeds["torchvision"]["data_wait_fraction"] + 0.05
    assert feeds["ours"]["decoder"] == ("dali" if result["step"]["device_type"] == "cuda" else "cpu")
    assert "smoke job" in run.stdout and "vs torchvision" in run.stdout
