"""Tracking never stops training: a lost MLflow server gives one warning, then the tracker stays quiet; the driver
closes the run once the server is back, or says that it could not."""

from __future__ import annotations

import threading
import time

import mlflow
import pytest

from trainer.tracking import CLOSE_WAIT_ENV, FAILURE_TAG, GAP_TAG, NOTE_TAG, Tracker

pytestmark = pytest.mark.slow


def test_server_lost_mid_run_warns_once_and_goes_on(mlflow_server, capsys, monkeypatch):
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
    assert "Retrying" not in first  # urllib3's per-retry lines are off
    assert not tracker.enabled
    t0 = time.monotonic()
    for step in range(3, 50):
        tracker.metrics({"train_loss": 1.0}, step=step)
    tracker.tag("verydeep.checkpoint_latest", "somewhere")
    assert time.monotonic() - t0 < 1.0  # no more network calls
    monkeypatch.setenv(CLOSE_WAIT_ENV, "2")
    t0 = time.monotonic()
    tracker.end()  # the driver waits (bounded) for the server, then says it could not close the run
    assert time.monotonic() - t0 < 10
    out = capsys.readouterr()
    assert "WARNING" not in out.err and f"run {tracker.run_id} is left RUNNING" in out.out
    assert mlflow.active_run() is None  # nothing left behind for the rest of the process


def test_driver_closes_the_run_with_its_reason_once_the_server_is_back(mlflow_server, capsys, monkeypatch):
    tracker = Tracker(True, mlflow_server.uri, "verydeep-test")
    tracker.start(None, "comes-back", {}, {})
    mlflow_server.stop()
    tracker.tag("verydeep.checkpoint_latest", "somewhere")  # fails: the one warning
    monkeypatch.setenv(CLOSE_WAIT_ENV, "300")
    back = threading.Thread(target=mlflow_server.restart)
    back.start()
    tracker.end("FAILED", "training failed: worker 0: ValueError: shard x is unreadable")
    back.join()
    run = mlflow.MlflowClient(mlflow_server.uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_TAG] == run.data.tags[NOTE_TAG] == "training failed: worker 0: ValueError: shard x " \
                                                                     "is unreadable"
    assert "unreachable during the job" in run.data.tags[GAP_TAG]
    assert capsys.readouterr().err.count("WARNING") == 1

    # Reopened by a resume: RUNNING again, the earlier failure's tags gone.
    again = Tracker(True, mlflow_server.uri, "verydeep-test")
    again.start(tracker.run_id, "comes-back", {}, {})
    run = mlflow.MlflowClient(mlflow_server.uri).get_run(tracker.run_id)
    assert run.info.status == "RUNNING" and not {FAILURE_TAG, NOTE_TAG, GAP_TAG} & set(run.data.tags)
    again.end()
    assert mlflow.MlflowClient(mlflow_server.uri).get_run(tracker.run_id).info.status == "FINISHED"
