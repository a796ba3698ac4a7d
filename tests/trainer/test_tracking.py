"""Tracking never stops training: a lost MLflow server gives one warning, then the tracker stays quiet."""

from __future__ import annotations

import time

import mlflow
import pytest

from trainer.tracking import Tracker

pytestmark = pytest.mark.slow


def test_server_lost_mid_run_warns_once_and_goes_on(mlflow_server, capsys):
    tracker = Tracker(True, mlflow_server.uri, "verydeep-test")
    tracker.start(None, "lost", {"model.arch": "A"}, {"verydeep.arch": "A"})
    assert tracker.run_id is not None
    tracker.metrics({"train_loss": 2.0}, step=1)
    history = mlflow.MlflowClient(mlflow_server.uri).get_metric_history(tracker.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0)]

    mlflow_server.stop()
    tracker.metrics({"train_loss": 1.5}, step=2)  # fails: one warning, tracking off
    first = capsys.readouterr().err
    assert first.count("WARNING: MLflow tracking stopped") == 1 and "training goes on" in first
    assert not tracker.enabled
    t0 = time.monotonic()
    for step in range(3, 50):
        tracker.metrics({"train_loss": 1.0}, step=step)
    tracker.tag("verydeep.checkpoint_latest", "somewhere")
    tracker.end()
    assert time.monotonic() - t0 < 1.0  # no more network calls
    assert "WARNING" not in capsys.readouterr().err
    assert mlflow.active_run() is None  # nothing left behind for the rest of the process
