"""benchmarks/scale.py: the ImageNet-shaped tree it builds, its exactly-once check, and a whole run at 1 % of ImageNet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale  # noqa: E402  (benchmarks/scale.py)


def test_class_sizes_are_imagenets():
    sizes = scale.class_sizes()
    assert len(sizes) == 1000 and sizes.sum() == 1_281_167 and (sizes.min(), sizes.max()) == (732, 1300)
    assert 50 < (sizes < 1300).sum() < 200  # a tail of smaller classes, as ImageNet's
    counts = [len(n) for n in scale.train_numbers(0.01)]
    assert sum(counts) == 12_813 and min(counts) >= 7  # every class present at 1 %


def test_exactly_once_check_finds_duplicates_strays_and_losses(tmp_path):
    keys = {f"k{i}" for i in range(10)}

    def epoch(e: int, *ranks: list[str]) -> None:
        for r, seen in enumerate(ranks):
            (tmp_path / f"keys-e{e}-r{r}.txt").write_text("\n".join(seen) + "\n")

    epoch(0, ["k0", "k1", "k2", "k3"], ["k4", "k5", "k6", "k7"])  # k8, k9: the last partial batches, dropped
    epoch(1, ["k0", "k1", "k2", "k3"], ["k3", "k5", "k6", "k7"])  # k3 twice
    epoch(2, ["k0", "k1", "k2", "k3"], ["k4", "k5", "k6", "x"])  # a key that is no training key
    epoch(3, ["k0", "k1"], ["k2", "k3"])  # more missing than the split and partial batches can drop
    checks = scale.check_exactly_once(tmp_path, 4, 2, 2, keys)
    assert [c["exactly_once"] for c in checks] == [True, False, False, False]
    assert checks[1]["duplicates"] == 1 and checks[2]["foreign"] == 1 and checks[3]["missing"] == 6


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.s3
def test_scale_benchmark_at_one_percent(tmp_path):
    """The whole run at F = 0.01 (12,813 + 500 images, ~1 minute on 2 cores): every stage measured, and each Ray Data
    epoch from S3 delivered every training image once across the two workers."""
    out = tmp_path / "scale.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--fraction", "0.01",
                          "--work", str(tmp_path / "work"), "--json", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    stages = result["stages"]
    assert set(stages) == {"listing", "prepare_local", "prepare_s3", "epochs"}
    for name, stage in stages.items():
        assert stage["wall_s"] > 0 and stage["driver_peak_mb"] > 0 and stage["items"] > 0, name
    assert stages["listing"]["items"] == 12_813 + 500
    for name in ("prepare_local", "prepare_s3"):  # ~550 shards at F = 1.0: ~6 at 1 %
        assert stages[name]["items"] == 12_813 + 500 and 5 <= stages[name]["train_shards"] <= 7
        assert stages[name]["manifest_bytes"] > 0 and stages[name]["skipped"] == 0
    epochs = stages["epochs"]
    assert epochs["exactly_once"] and len(epochs["epochs"]) == 2
    for e in epochs["epochs"]:
        assert e["exactly_once"] and e["duplicates"] == e["foreign"] == 0
        assert e["keys_seen"] == e["rows"] == 12_813 - e["missing"] and e["rows"] % 256 == 0
        assert 0 < e["first_batch_s"] <= e["wall_s"]
    assert epochs["val"]["rows"] == 500  # validation: every image, nothing dropped
    assert "epochs:" in run.stdout and np.isfinite(result["seconds"])
