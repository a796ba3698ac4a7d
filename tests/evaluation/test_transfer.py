"""evaluation.transfer end to end on tiny targets in their real layouts: descriptors on Ray, stored and reused, SVMs,
Table 11's layout, MLflow; and the descriptor arithmetic against a direct computation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from target_trees import make_caltech, make_voc2007

from evalkit import CROP, tiny_net
from evaluation.svm import fuse, pool_scales
from evaluation.transfer import TransferConfig, main, run
from pipeline.prepare import main as prepare_main
from vgg.card import ModelCard, save_model
from vgg.evaluate import dense_descriptors

ROOT = Path(__file__).resolve().parents[2]


def _net(tmp: Path, name: str, arch: str, seed: int, classes: int = 10) -> str:
    """A tiny net trained on some other 10-class task (its FC8 is dropped by the job)."""
    card = ModelCard(arch=arch, num_classes=classes, crop=CROP, smin=32, smax=48, mean=(120.0, 110.0, 100.0),
                     width=0.125, fc_width=32)
    return str(save_model(tmp / name, tiny_net(classes, seed, arch), card))


def _tracking(tmp: Path) -> str:
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("transfer-test", artifact_location=str(tmp / "artifacts"))
    return uri


@pytest.fixture(scope="module")
def caltech_target(ray_local, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("caltech")
    tree = make_caltech(tmp / "src", "caltech101", per_class=(9, 10, 11, 9))
    dst = tmp / "shards"
    assert prepare_main(["--layout", "caltech101", "--src", str(tree.root), "--dst", str(dst), "--train-per-class",
                         "5", "--test-per-class", "3", "--max-rows-per-shard", "12"]) == 0
    return str(dst)


def test_descriptor_is_the_flip_averaged_global_average_of_fc7():
    net = tiny_net(10, 0).double().eval()
    x = torch.randn(2, 3, 48, 40, dtype=torch.float64)
    fc6, _, _, fc7, _, _, _ = net.classifier

    def by_hand(img: torch.Tensor) -> torch.Tensor:
        # Crop 32 = one 1x1 cell after five pools: FC6 is a 1x1 conv over the map, ReLU, FC7 a 1x1 conv, ReLU, mean
        # over space; FC8 never runs.
        y = net.features(img)
        y = torch.relu(torch.nn.functional.conv2d(y, fc6.weight.view(32, y.shape[1], 1, 1), fc6.bias))
        return torch.relu(torch.nn.functional.conv2d(y, fc7.weight[:, :, None, None], fc7.bias)).mean(dim=(2, 3))

    with torch.no_grad():
        got = dense_descriptors(net, x)
        want = 0.5 * (by_hand(x) + by_hand(x.flip(3)))
        alone = dense_descriptors(net, x, flip=False)  # a net trained without flips: the image alone
        alone_by_hand = by_hand(x)
    assert got.shape == (2, 32)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(alone, alone_by_hand)


def test_pooling_and_fusion_by_hand():
    a, b = np.array([[3.0, 0.0]]), np.array([[0.0, 4.0]])
    # average: (1.5, 2) / 2.5 = (0.6, 0.8); stack: (3, 0, 0, 4) / 5.
    np.testing.assert_allclose(pool_scales([a, b], "average"), [[0.6, 0.8]])
    np.testing.assert_allclose(pool_scales([a, b], "stack"), [[0.6, 0.0, 0.0, 0.8]])
    # Fusion of two unit descriptors: stacked, divided by sqrt(2).
    np.testing.assert_allclose(fuse([np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])]), [[2**-0.5, 0, 0, 2**-0.5]])


@pytest.mark.ray
def test_caltech_transfer_end_to_end_then_reruns_reuse_the_descriptors(caltech_target, tmp_path, capsys):
    a, b = _net(tmp_path, "a", "A", 0), _net(tmp_path, "b", "B", 1)
    out, uri = tmp_path / "out", _tracking(tmp_path)
    argv = ["--model", a, "--model", b, "--data", caltech_target, "--scales", "32", "48", "--c-grid", "0.1", "1",
            "10", "--out", str(out), "--tracking-uri", uri, "--experiment", "transfer-test", "--batch-size", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "Table 11 layout: Caltech-101 (mean class recall, %)" in printed.out and "transfer:" in printed.err
    table = (out / "report" / "table11.csv").read_text().splitlines()
    assert table[0] == "Method,Caltech-101,paper" and len(table) == 4  # two nets and their fusion
    assert all(line.endswith(",-") for line in table[1:])  # nets A and B: not in the paper's Table 11
    assert " & " in table[3] and all("±" in line for line in table[1:])  # 3 splits: mean ± std
    # 2 nets x 2 Q x every shard of every split (train, val, test, rest), one file each.
    files = sorted(out.glob("features/*/*/q*/fc7/*.parquet"))
    manifest_shards = sum(1 for _ in Path(caltech_target).glob("*/*.parquet"))
    assert len(files) == 2 * 2 * manifest_shards and manifest_shards > 4
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("transfer-test").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3 * 3  # (2 nets + fusion) x 3 splits
    assert all(0.0 <= c.data.metrics["mean_class_recall"] <= 1.0 for c in children)
    assert {c.data.params["split"] for c in children} == {"1", "2", "3"}
    assert any(k.startswith("recall ") for k in children[0].data.metrics)

    before = {f: f.stat().st_mtime_ns for f in files}
    again = run(TransferConfig(model=(a, b), data=caltech_target, scales=(32, 48), c_grid=(1.0,), out=str(out),
                               mlflow=False))
    assert again.computed == []  # every descriptor was stored: no task ran
    stacked = run(TransferConfig(model=(a,), data=caltech_target, scales=(32, 48), pool="average", out=str(out),
                                 mlflow=False, splits=1))
    assert stacked.computed == [] and len(stacked.rows) == 1 and len(stacked.rows[0].fits) == 1
    assert all(f.stat().st_mtime_ns == t for f, t in before.items())
    # One more scale computes only that scale's descriptors.
    more = run(TransferConfig(model=(a,), data=caltech_target, scales=(32, 40), out=str(out), mlflow=False))
    assert {q for _, q, _, _ in more.computed} == {40} and len(more.computed) == manifest_shards


@pytest.mark.ray
def test_voc_transfer_reports_map_with_difficult_left_out(ray_local, tmp_path, capsys):
    tree = make_voc2007(tmp_path / "src", counts=(9, 9, 9))
    target = tmp_path / "voc"
    assert prepare_main(["--layout", "voc2007", "--src", str(tree.root), "--dst", str(target)]) == 0
    net = _net(tmp_path, "a", "A", 0)
    result = run(TransferConfig(model=(net,), data=str(target), scales=(32,), c_grid=(0.1, 1.0), ap="11point",
                                out=str(tmp_path / "out"), mlflow=False))
    (row,) = result.rows
    (fit,) = row.fits
    assert fit.per_class.shape == (3,) and 0.0 < fit.metric <= 1.0 and fit.metric == pytest.approx(fit.per_class.mean())
    assert set(fit.val) == {0.1, 1.0} and fit.c in (0.1, 1.0)
    assert "VOC-2007 (mAP, %)" in result.report.markdown()


@pytest.mark.ray
def test_bad_input_is_one_line(caltech_target, prepared_shards, tmp_path, capsys):
    net = _net(tmp_path, "a", "A", 0)
    cases = [
        (["--data", prepared_shards], "is not a transfer target"),
        (["--data", caltech_target, "--scales", "16"], "smaller than the crop 32"),
        (["--data", caltech_target, "--protocol", "voc2007", "--scales", "32"], "does not fit a single-label"),
        (["--data", caltech_target, "--splits", "4", "--scales", "32"], "records 3"),
    ]
    for args, match in cases:
        assert main(["--model", net, "--out", str(tmp_path / "out"), "--no-mlflow", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err


def test_bad_flags_exit_2_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evaluation.transfer", "--model", "x", "--data", "y", "--pool",
                           "max"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--pool" in proc.stderr
