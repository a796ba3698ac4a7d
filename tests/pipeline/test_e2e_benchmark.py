"""benchmarks/pipeline_e2e.py still runs end to end: S3 ingestion, Ray Data -> Train worker, DataLoader, ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_quick(script: str, tmp_path: Path, out: Path) -> subprocess.CompletedProcess:
    """``benchmarks/<script> --quick`` with its JPEGs and JSON under ``tmp_path``; asserts it exited 0."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick",
                          "--workdir", str(tmp_path / "jpegs"), "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.s3
def test_benchmark_quick_runs(tmp_path):
    out = tmp_path / "e2e.json"
    run = run_quick("pipeline_e2e.py", tmp_path, out)
    result = json.loads(out.read_text())
    images = result["setup"]["images"]
    assert result["command"].endswith(f"--json {out}") and "--quick" in result["command"]
    for run_ in result["runs"]:
        # Every image of the epoch reached the consumer on both sides, exactly once per epoch.
        assert run_["ray"]["images"] == images and run_["dataloader"]["images"] == images
        assert run_["ray"]["decoder_backend"] == "cpu"
        for side in ("ray", "dataloader"):
            assert all(r > 0 for r in run_[side]["epoch_img_per_s"] + run_[side]["steady_img_per_s"])
        ours, base = run_["ray"]["epoch_img_per_s"][0], run_["dataloader"]["epoch_img_per_s"][0]
        assert run_["ratio_epoch"] == pytest.approx(ours / base, abs=0.01)
    assert "ray data -> train worker" in run.stdout and "target ours" in run.stdout


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.s3
def test_verify_cost_quick_runs(tmp_path):
    out = tmp_path / "verify.json"
    run = run_quick("verify_cost.py", tmp_path, out)
    result = json.loads(out.read_text())
    images = result["setup"]["images"]
    # Every reader delivered every image of each epoch; the verified and unverified sides read the same data.
    for reader, rounds in result["read_path"]["rounds"].items():
        assert all(r["images"] == images and min(r["img_per_s"]) > 0 for r in rounds), reader
    e2e = result["end_to_end"]["runs"]
    assert e2e["verified"][0]["images"] == e2e["unverified"][0]["images"] == result["setup"]["e2e"]["images"]
    assert result["pyarrow_in_memory"]["verified_s_per_gb"] > 0
    assert set(result["ratio_verified_to_unverified"]) == {"read_path", "end_to_end"}
    assert "verification cost" in run.stdout
