"""`make demo` in a reduced form (2 epochs, 60 held-out images), then its results read back through the REST API of
a real MLflow server, as the UI reads them."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import start_mlflow_server
from console_lines import looks_like_error, ours

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]


def api(base: str, path: str, **query) -> dict:
    """GET an MLflow REST endpoint (the UI's own API)."""
    url = f"{base}/api/2.0/mlflow/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query, doseq=True)
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_reduced_demo_end_to_end_and_in_mlflow(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "demo", "--out", str(out), "--epochs", "2", "--max-images", "60"]
    # What a person sees: stdout and stderr as one console.
    first = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-8000:]
    for stage in ("1/4", "2/4", "3/4", "4/4"):
        assert f"== {stage}" in first.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in first.stdout
    # The line budget: at most 200 lines (the full demo's too), at least 80 % ours, none that reads as a failure.
    lines = first.stdout.splitlines()
    assert len(lines) <= 200, len(lines)
    assert sum(map(ours, lines)) >= 0.8 * len(lines), [line for line in lines if not ours(line)]
    assert not [line for line in lines if looks_like_error(line)], first.stdout
    # Training's console: each epoch's line once.
    assert sum("epoch 1/2 done in" in line for line in lines) == 1
    # The sweep's tables are printed: dense and multi-crop rows for net A at the demo's three Q, without flips, as
    # the net was trained (mirrored digits are other digits).
    assert "### Table 3: single test scale" in first.stdout
    for q in (32, 40, 48):
        for method in ("dense", "multi-crop, 25 crops/scale"):
            assert f"| A | [32;48] | {q} | {method} |" in first.stdout, (q, method)

    # Rerun: every stage finds its work done.
    again = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-8000:]
    assert "already complete (2 epochs)" in again.stdout

    server = start_mlflow_server(tmp_path / "server", f"sqlite:///{out / 'mlflow.db'}")
    try:
        train_exp = api(server.uri, "experiments/get-by-name", experiment_name="verydeep")["experiment"]
        runs = post(server.uri, "runs/search", {"experiment_ids": [train_exp["experiment_id"]]})["runs"]
        train = next(r for r in runs if r["info"]["run_name"] == "demo-A")
        assert train["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in train["data"]["params"]}
        assert params["model.arch"] == "A" and params["data.flip"] == "False"
        curve = api(server.uri, "metrics/get-history", run_id=train["info"]["run_id"], metric_key="val/top1_err")
        assert len(curve["metrics"]) == 2  # the learning curve, one point per epoch
        assert api(server.uri, "metrics/get-history", run_id=train["info"]["run_id"],
                   metric_key="train/loss")["metrics"]
        # Every artifact shows: the config and the logged model, read through the server as the UI reads them.
        logged = {f["path"] for f in api(server.uri, "artifacts/list", run_id=train["info"]["run_id"]).get("files", [])}
        assert "config.yaml" in logged, logged

        eval_exp = api(server.uri, "experiments/get-by-name", experiment_name="verydeep-eval")["experiment"]
        sweep_runs = post(server.uri, "runs/search", {"experiment_ids": [eval_exp["experiment_id"]]})["runs"]
        parent = next(r for r in sweep_runs if r["info"]["run_name"] == "demo-sweep")
        children = [r for r in sweep_runs if any(t["key"] == "mlflow.parentRunId" and t["value"] ==
                                                 parent["info"]["run_id"] for t in r["data"].get("tags", []))]
        assert children  # a child run per (net, Q, method)
        assert any(m["key"].startswith("top1_err") or "top1" in m["key"] for c in children
                   for m in c["data"].get("metrics", []))
        files = api(server.uri, "artifacts/list", run_id=parent["info"]["run_id"]).get("files", [])
        names = {f["path"] for f in files}
        assert any(n.endswith(".png") for n in names) or any(f.get("is_dir") for f in files), names
    finally:
        server.stop()
