"""What `python -m trainer.run` prints and records, as a person reads it: the console contract (a progress line with
its fields, each epoch line once, a small budget of lines, most of them ours, none looking like a failure) and the
MLflow contract (metrics grouped by prefix, the LR also as log10, a description naming what the run reproduces)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from console_lines import looks_like_error, ours
from test_run import args

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROGRESS = re.compile(r"epoch (\d+)/2 step (\d+)/3: loss \d[\d.e+-]*, top-1 err \d+\.\d %, lr \d\.\de[+-]\d\d, \d+ img/s, "
                      r"data wait \d+ %, ETA epoch \d+:\d\d, run <= \d+:\d\d$")
EPOCH = re.compile(r"epoch (\d)/2 done in \d+\.\d s, \d+ img/s: val top-1 err \d+\.\d\d %, top-5 err \d+\.\d\d % "
                   r"\(8 images, Q=\d+\) -> (keep|stop)")


def test_console_and_mlflow_contract_of_a_short_run(prepared_shards, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "trainer.run", *args(prepared_shards, tmp_path, "console"),
                           "--epochs", "2", "--ray-address", "local"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    lines = proc.stdout.splitlines()
    text = "\n".join(lines)

    # A progress line with every field: the first window's (3 steps an epoch: a window is a step), then at most one
    # every PROGRESS_EVERY_S.
    progress = [m.groups() for line in lines if (m := PROGRESS.search(line))]
    assert progress and progress[0] == ("1", "1") and len(progress) <= 6, text
    assert len([line for line in lines if "step " in line]) == len(progress), text
    # Each epoch's line once, with its time and rate.
    epochs = [m.group(1) for line in lines if (m := EPOCH.search(line))]
    assert epochs == ["1", "2"], text
    assert "done: console after 2 epochs, 6 steps; best val top-1 err" in text and "\nmodel: " in text
    # The budget: a short run fits on a screen, with a handful of Ray's and MLflow's own lines (whatever the run's
    # length: the demo's 50 epochs hold them under 20 %), nothing that reads as a failure.
    theirs = [line for line in lines if not ours(line)]
    assert len(lines) <= 40 and len(theirs) <= 10, text
    assert not [line for line in lines if looks_like_error(line)], text

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("verydeep").experiment_id])[0]
    keys = set(run.data.metrics)
    assert {"train/loss", "train/top1_err", "train/lr", "train/lr_log10", "perf/images_per_s", "perf/data_wait_pct",
            "val/top1_err", "val/top5_err", "val/loss", "sys/replica_divergence"} <= keys, keys
    assert all(k.split("/")[0] in ("train", "val", "perf", "sys", "system") for k in keys), keys
    assert not {"epoch", "epoch_progress", "step"} & keys
    lr = client.get_metric_history(run.info.run_id, "train/lr")[0].value
    assert client.get_metric_history(run.info.run_id, "train/lr_log10")[0].value == pytest.approx(math.log10(lr))
    # Errors in %, as the paper gives them.
    assert all(0 <= m.value <= 100 for m in client.get_metric_history(run.info.run_id, "val/top1_err"))
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("Reproduces no row of the paper's tables: Table 3 has no VGG-A trained at S=[32;40]"), note
    assert "Deviations from the paper: " in note and "width 0.125" in note
