"""The sweep end to end on the tiny split: CLI, Ray tasks, stored posteriors, tables, MLflow, reruns, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_refusal import refused

from evalkit import CROP, card_for, decoded, tiny_net
from evaluation.config import parse_args
from evaluation.methods import DENSE, DENSE_NOFLIP, MULTICROP, MULTICROP_NOFLIP
from evaluation.models import load
from evaluation.posteriors import PosteriorStore
from evaluation.sweep import main, run
from pipeline.manifest import load_manifest
from pipeline.models import MODEL_URI_TAG
from vgg.card import save_model

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("table3_single_scale", "table4_multi_scale", "table5_dense_vs_multicrop", "table6_fusion")


def tracking(tmp_path: Path) -> str:
    """A sqlite tracking URI whose experiment keeps its artifacts under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("eval-test", artifact_location=str(tmp_path / "artifacts"))
    return uri


def check_mlflow(uri: str, files: list[Path], manifest: str) -> None:
    """The sweep's MLflow contract: a parent run spanning the sweep, described by its tables, with the split as its
    dataset input; one child per (net, Q, method), named as the paper writes a row, errors in %."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("eval-test")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's machine-learning pages
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # 2 nets x 1 Q x (dense, multi-crop, both).
    assert sorted(c.info.run_name for c in children) == [
        "A S[32,48] Q40 dense", "A S[32,48] Q40 multi-crop", "A S[32,48] Q40 multi-crop & dense",
        "B S40 Q40 dense", "B S40 Q40 multi-crop", "B S40 Q40 multi-crop & dense"]
    assert {(c.data.params["method"], c.data.params["flip"]) for c in children} == {
        ("dense", "on"), ("multicrop", "on"), ("multicrop+dense", "on")}
    # The parent opened before the first posterior was computed and closed after the last child.
    first_file = min(f.stat().st_mtime for f in files) * 1000
    assert parent.info.start_time <= first_file
    assert all(parent.info.start_time <= c.info.start_time <= c.info.end_time <= parent.info.end_time
               for c in children)
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    note = parent.data.tags["mlflow.note.content"]
    assert "### Table 3: single test scale" in note and "| ConvNet config | train S |" in note
    assert "### Table 6" in note and "| A/[32;48] |" in note
    # Errors in %, as the tables give them; the dense child adds its unflipped half.
    dense = next(c for c in children if c.info.run_name == "A S[32,48] Q40 dense")
    assert set(dense.data.metrics) == {"top1_err_pct", "top5_err_pct", "top1_err_pct_noflip", "top5_err_pct_noflip",
                                       "images"}
    assert all(0 <= c.data.metrics["top1_err_pct"] <= 100 and c.data.metrics["images"] == 8 for c in children)
    assert any(c.data.metrics["top1_err_pct"] > 1 for c in children)  # percent, not fractions
    assert all(k.endswith("_err_pct") and k.split("/")[0] in ("A S32-48", "B S40", "fusion")
               for k in parent.data.metrics), parent.data.metrics
    assert "A S32-48/dense Q40 top1_err_pct" in parent.data.metrics
    # The split evaluated, as a dataset input: the manifest as source, the sweep's data id as digest.
    (ds,) = parent.inputs.dataset_inputs
    assert ds.dataset.digest == files[0].parts[-5] and ds.dataset.name.endswith("/val")
    assert str(Path(manifest).resolve()) in ds.dataset.source
    assert json.loads(ds.dataset.profile)["images"] == 8 and {t.key: t.value for t in ds.tags} == {
        "mlflow.data.context": "evaluation"}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/error_vs_q.png" in artifacts and "report/table6_fusion.csv" in artifacts
    # MLflow's table view reads a column name with "." as a path into nested data: such a column renders blank.
    for table in client.list_artifacts(parent.info.run_id, "tables"):
        columns = json.loads(Path(client.download_artifacts(parent.info.run_id, table.path)).read_text())["columns"]
        assert columns and not any("." in c for c in columns), (table.path, columns)

@pytest.mark.ray
def test_sweep_end_to_end_then_a_rerun_computes_only_the_missing_scale(prepared_shards, untrained_model, tmp_path,
                                                                       capsys):
    other = save_model(tmp_path / "other", tiny_net(4, seed=1, arch="B"), card_for(prepared_shards, 40, 40, arch="B"))
    out, uri = tmp_path / "out", tracking(tmp_path)
    argv = ["--model", str(untrained_model), "--model", str(other), "--data", prepared_shards, "--scales", "40",
            "--out", str(out), "--tracking-uri", uri, "--experiment", "eval-test", "--batch-size", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "Table 3" in printed.out and "Table 6" in printed.out and "sweep:" in printed.err  # tables + progress
    report = out / "report"
    for name in TABLES:
        assert (report / f"{name}.md").exists() and (report / f"{name}.csv").exists()
    assert (report / "error_vs_q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    files = sorted(out.glob("posteriors/*/*/q40/*/*.parquet"))
    assert {f.parent.name for f in files} == {DENSE, DENSE_NOFLIP, MULTICROP} and len(files) == 6
    check_mlflow(uri, files, prepared_shards)
    fusion = (report / "table6_fusion.csv").read_text().splitlines()
    assert len(fusion) == 1 + 3 and "(A/[32;48]/40), (B/40/40)" in fusion[1]

    before = {f: f.stat().st_mtime_ns for f in files}
    result = run(parse_args([*argv, "--scales", "40", "48", "--no-mlflow"]))
    assert sorted({(q, shard) for _, q, shard in result.computed}) == [(48, 0)]  # only the new scale, both nets
    assert len(result.computed) == 2
    assert all(f.stat().st_mtime_ns == t for f, t in before.items())  # stored posteriors were reused, not rewritten
    t4 = (report / "table4_multi_scale.csv").read_text()
    assert "40,48" in t4 and "dense" in t4
    # A third run finds everything stored: no task at all.
    assert run(parse_args([*argv, "--scales", "40", "48", "--no-mlflow"])).computed == []



@pytest.mark.ray
def test_a_net_trained_without_flips_is_swept_without_them_unless_told(prepared_shards, tmp_path, capsys):
    model = save_model(tmp_path / "noflip", tiny_net(4, seed=2), card_for(prepared_shards, 40, 40, flip=False))
    out = tmp_path / "out"
    argv = ["--model", str(model), "--data", prepared_shards, "--scales", "40", "--out", str(out), "--no-mlflow",
            "--batch-size", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| A | 40 | 40 | dense |" in printed and "| A | 40 | 40 | multi-crop, 25 crops/scale |" in printed
    assert "flip-averaged" not in printed and "50 crops" not in printed
    views = lambda: {f.parent.name for f in out.glob("posteriors/*/*/q40/*/*.parquet")}  # noqa: E731
    assert views() == {DENSE_NOFLIP, MULTICROP_NOFLIP}  # no mirror image was evaluated
    # --flip on: the paper's protocol for this net too; only the views with flips are computed.
    forced = run(parse_args([*argv, "--flip", "on"]))
    assert forced.computed == [(load(str(model)).model_id, 40, 0)]
    assert views() == {DENSE, DENSE_NOFLIP, MULTICROP, MULTICROP_NOFLIP}
    assert [r[3] for r in forced.report.tables[0].rows] == ["dense, flip-averaged", "dense",
                                                            "multi-crop, 50 crops/scale"]
    off = run(parse_args([*argv, "--flip", "off"]))  # back to the stored views: nothing to compute
    assert off.computed == [] and [r[3] for r in off.report.tables[0].rows] == ["dense", "multi-crop, 25 crops/scale"]

def train_tiny(manifest: str, steps: int = 40) -> torch.nn.Module:
    """A few SGD steps of a thin net A on the tiny training split (random crops of images rescaled to 40)."""
    images, labels, _ = decoded(manifest, "train", 40)
    net = tiny_net(4, seed=3)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    targets = torch.as_tensor(labels)
    for _ in range(steps):
        crops = []
        for x in images:
            t = int(torch.randint(0, x.shape[1] - CROP + 1, (1,), generator=gen))
            l = int(torch.randint(0, x.shape[2] - CROP + 1, (1,), generator=gen))
            crops.append(x[:, t : t + CROP, l : l + CROP])
        loss = F.cross_entropy(net(torch.stack(crops)), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def validation_top1(net: torch.nn.Module, manifest: str, q: int) -> tuple[float, np.ndarray]:
    """Validation as training does it: dense at Q, score map averaged, soft-max, no flip; one image at a time."""
    images, labels, keys = decoded(manifest, "val", q)
    probs = torch.cat([net.forward_dense(x[None]).mean(dim=(2, 3)).softmax(dim=1) for x in images]).numpy()
    order = np.argsort(keys)
    return float(np.mean(probs.argmax(1) == labels)), probs[order]


@pytest.mark.ray
def test_a_trained_net_reproduces_its_own_validation_top1(prepared_shards, tmp_path):
    net = train_tiny(prepared_shards)
    top1, probs = validation_top1(net, prepared_shards, 40)
    model = save_model(tmp_path / "trained", net, card_for(prepared_shards, info={"val_top1": top1, "val_q": 40}))
    result = run(parse_args(["--model", str(model), "--data", prepared_shards, "--scales", "40", "--methods", "dense",
                             "--out", str(tmp_path / "out"), "--no-mlflow"]))
    (cell,) = [c for c in result.report.cells if c.method == DENSE]
    assert cell.extra["top1_err_noflip"] == pytest.approx(1 - top1, abs=1e-12)
    assert top1 > 0.25  # it learnt something: the check is not a comparison of chance levels
    m = load(str(model))
    manifest = load_manifest(prepared_shards)
    from evaluation.posteriors import data_id

    stored = PosteriorStore(str(tmp_path / "out"), data_id(manifest, "val")).read(m.model_id, 40, DENSE_NOFLIP, [0])
    np.testing.assert_allclose(stored.probs, probs, rtol=1e-5, atol=1e-6)


def empty_split_manifest(prepared_shards: str, tmp_path: Path) -> str:
    doc = json.loads(Path(prepared_shards).read_text())
    doc["splits"]["val"] = {"count": 0, "shards": []}
    path = tmp_path / "empty" / "manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.ray
@pytest.mark.parametrize("case", ["missing checkpoint", "Q below the crop", "different class lists", "empty split",
                                  "unknown split", "classes unlike the data's"])
def test_bad_input_is_one_line_and_a_nonzero_exit(case, prepared_shards, untrained_model, tmp_path, capsys):
    data, models, extra = prepared_shards, [str(untrained_model)], []
    if case == "missing checkpoint":
        models = [str(tmp_path / "no-such-model")]
        expected = f"model directory {tmp_path / 'no-such-model'} does not exist"
    elif case == "Q below the crop":
        extra, expected = ["--scales", "24", "40"], "Q=24 is smaller than the crop 32"
    elif case == "different class lists":
        wnids = tuple(load_manifest(prepared_shards).wnids)
        card = card_for(prepared_shards, classes=(*wnids[:3], "n09999999"))
        models.append(str(save_model(tmp_path / "odd", tiny_net(4), card)))
        expected = "different class lists"
    elif case == "empty split":
        data, expected = empty_split_manifest(prepared_shards, tmp_path), "has no images"
    elif case == "unknown split":
        extra, expected = ["--split", "test"], "no split 'test'"
    else:
        wnids = tuple(load_manifest(prepared_shards).wnids)
        card = card_for(prepared_shards, classes=wnids[::-1])
        models = [str(save_model(tmp_path / "reversed", tiny_net(4), card))]
        expected = "orders its classes differently"
    argv = [a for m in models for a in ("--model", m)] + ["--data", data, "--out", str(tmp_path / "out"),
                                                          "--no-mlflow", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "out").exists()  # refused before any compute


@pytest.mark.ray
@pytest.mark.parametrize("case", ["model.pt given", "card.json given", "gpus_per_task nan", "s3 endpoint not a URL"])
def test_bad_flags_are_refused_before_any_work(case, prepared_shards, untrained_model, tmp_path):
    model, extra = str(untrained_model), []
    if case == "model.pt given":
        model = str(untrained_model / "model.pt")
    elif case == "card.json given":
        model = str(untrained_model / "card.json")
    elif case == "gpus_per_task nan":
        extra = ["--gpus-per-task", "nan"]
    else:
        extra = ["--s3-endpoint", "::not a url::"]
    argv = ["--model", model, "--data", prepared_shards, "--out", str(tmp_path / "out"), "--no-mlflow", *extra]
    line = refused("evaluation.sweep", argv, tmp_path)
    if case.endswith("given"):
        assert f"{model} is a file" in line and f"holds model.pt and card.json (e.g. {untrained_model})" in line
    else:
        assert ("bad gpus_per_task nan" if "nan" in case else "bad s3_endpoint '::not a url::'") in line, line
    assert not (tmp_path / "out").exists()


def test_cli_exit_code_in_a_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evaluation.sweep", "--model", str(tmp_path / "gone"), "--data",
                           str(tmp_path / "manifest.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "manifest" in lines[0]


@pytest.mark.s3
def test_models_resolve_from_s3_and_from_mlflow_runs(s3_server, untrained_model, tmp_path):
    bucket = s3_server.create_bucket()
    for f in untrained_model.iterdir():
        s3_server.client.upload_file(str(f), bucket.removeprefix("s3://"), f"ckpt/best/{f.name}")
    uri = tracking(tmp_path)
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.get_experiment_by_name("eval-test").experiment_id).info.run_id
    client.set_tag(run_id, MODEL_URI_TAG, f"{bucket}/ckpt/best")
    local = load(str(untrained_model))
    for source in (f"{bucket}/ckpt/best", f"runs:/{run_id}", run_id):
        m = load(source, tracking_uri=uri)
        assert m.model_id == local.model_id and m.card == local.card
        assert all(torch.equal(m.state[k], v) for k, v in local.state.items())
    bare = client.create_run(client.get_experiment_by_name("eval-test").experiment_id).info.run_id
    with pytest.raises(ValueError, match="no verydeep.model_uri tag"):
        load(f"runs:/{bare}", tracking_uri=uri)


@pytest.mark.ray
def test_an_unreachable_tracking_server_costs_one_warning_and_under_30_s(prepared_shards, untrained_model, tmp_path,
                                                                          capsys, monkeypatch):
    import socket

    import evaluation.sweep as sweep

    with socket.socket() as s:  # a loopback port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    spent: list[float] = []

    def timed(step):
        def call(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return step(*args, **kwargs)
            finally:
                spent.append(time.monotonic() - t0)
        return call

    for name in ("start", "finish", "end"):
        monkeypatch.setattr(sweep.SweepRun, name, timed(getattr(sweep.SweepRun, name)))
    out = tmp_path / "out"
    argv = ["--model", str(untrained_model), "--data", prepared_shards, "--scales", "40", "--out", str(out),
            "--tracking-uri", dead, "--batch-size", "4"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert spent and sum(spent) < 30, spent  # MLflow's defaults retried for 265 s
    assert err.count("WARNING") == 1 and "MLflow logging failed" in err and str(out / "report") in err
    assert "Retrying" not in err
    assert (out / "report" / "table3_single_scale.md").exists()
