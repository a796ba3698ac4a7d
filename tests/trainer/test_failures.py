"""Failures say what broke and leave honest records: every job that ends badly closes its MLflow run FAILED with
the reason the CLI prints; an MLflow outage costs one warning per process and the run is closed once it is back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import psutil
import pytest

import trainer.run as run
from trainer import checkpoint as ckpt

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# The tags as the MLflow UI shows them: the reason a run failed (also its description), the outage note, the model.
FAILURE_TAG, NOTE_TAG, GAP_TAG, MODEL_URI_TAG = ("verydeep.failure", "mlflow.note.content", "verydeep.tracking_gap",
                                                 "verydeep.model_uri")

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--arch", "A", "--width", "0.125", "--fc-width", "16", "--crop", "32", "--scale-jitter", "32", "40",
        "--batch-size", "8", "--init", "glorot", "--cpus-per-worker", "0.5", "--shuffle-buffer", "16",
        "--max-failures", "0"]


def args(manifest: str, tmp: Path, name: str, *extra: str) -> list[str]:
    return [*TINY, "--data", manifest, "--storage", str(tmp / "runs"), "--name", name,
            "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", *extra]


def runs(tmp: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("verydeep")
    return [] if exp is None else client.search_runs([exp.experiment_id])


def error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err
    return err[0].removeprefix("error: ")


def test_a_batch_larger_than_the_data_opens_no_run(prepared_shards, ray_local, tmp_path, capsys):
    assert run.main(args(prepared_shards, tmp_path, "big", "--batch-size", "4096")) == 2
    assert "make no full batch of 4096" in error_line(capsys)
    assert not [r for r in runs(tmp_path) if r.info.status != "FAILED"]  # was FINISHED


def test_a_shard_unreadable_after_the_checks_fails_the_run_with_the_reason(prepared_shards, ray_local, tmp_path,
                                                                            capsys, monkeypatch):
    data = tmp_path / "shards"
    shutil.copytree(Path(prepared_shards).parent, data)
    checked = run.plan

    def plan_then_truncate(cfg):
        out = checked(cfg)
        for shard in (data / "train").glob("*.parquet"):  # the data goes bad between the checks and the read
            os.truncate(shard, shard.stat().st_size - 100)
        return out

    monkeypatch.setattr(run, "plan", plan_then_truncate)
    assert run.main(args(str(data / "manifest.json"), tmp_path, "trunc", "--epochs", "1")) != 0
    reason = error_line(capsys)
    assert "Parquet" in reason or "train-00000" in reason, reason  # the root cause, not Ray's wrapper text
    (record,) = runs(tmp_path)
    assert record.info.status == "FAILED"  # was FINISHED
    assert record.data.tags[FAILURE_TAG] == record.data.tags[NOTE_TAG] == reason


def test_a_worker_dying_past_max_failures_fails_the_run_naming_the_flag(prepared_shards, ray_local, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("VERYDEEP_STEP_DELAY_S", "1.0")
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if list((tmp_path / "runs" / "dies").glob("checkpoint_e000_s*/train_state.json")):
                for proc in psutil.Process().children(recursive=True):  # our own Ray's workers only
                    try:
                        if any("RayTrainWorker" in part for part in proc.cmdline()):
                            proc.kill()
                            killed.append(proc.pid)
                    except psutil.Error:
                        pass
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    assert run.main(args(prepared_shards, tmp_path, "dies", "--epochs", "2", "--checkpoint-every-steps", "1")) == 1
    killer.join(timeout=5)
    assert killed
    reason = error_line(capsys)
    assert reason.startswith("training failed: worker 0: ") and "--max-failures 0" in reason, reason
    assert "Training failed due to worker errors" not in reason  # Ray's wrapper text
    (record,) = runs(tmp_path)
    assert record.info.status == "FAILED" and record.data.tags[FAILURE_TAG] == reason


def test_server_killed_mid_run_one_warning_per_process_and_the_run_closed_when_it_is_back(prepared_shards,
                                                                                         mlflow_server, tmp_path):
    """The CLI in its own process with its own local Ray, so the driver's and the worker's output are both seen."""
    ray_tmp = tempfile.mkdtemp(prefix="vd-ray-", dir="/tmp")  # short: Ray's socket paths; no other Ray found there
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp, "RAY_DEDUP_LOGS": "0",
           "VERYDEEP_STEP_DELAY_S": "1.0", "VERYDEEP_MLFLOW_CLOSE_WAIT_S": "300"}
    env.pop("RAY_ADDRESS", None)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    argv = [*TINY, "--data", prepared_shards, "--storage", str(tmp_path / "runs"), "--name", "outage",
            "--tracking-uri", mlflow_server.uri, "--epochs", "2", "--checkpoint-every-steps", "1"]
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "trainer.run", *argv], cwd=ROOT, env=env, stdout=fo,
                                stderr=fe)
    try:
        deadline = time.monotonic() + 400
        while not list((tmp_path / "runs" / "outage").glob("checkpoint_e000_s*/train_state.json")):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.2)
        mlflow_server.stop()
        while "MLflow: waiting up to" not in out.read_text():  # the job is over; the driver waits to close the run
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.5)
        mlflow_server.restart()
        assert proc.wait(timeout=300) == 0, err.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    lines = (out.read_text() + err.read_text()).splitlines()
    warnings = [line for line in lines if "WARNING: MLflow tracking stopped" in line]
    assert len([w for w in warnings if "RayTrainWorker" in w]) == 1, warnings
    assert len([w for w in warnings if "pid=" not in w]) == 1, warnings  # the driver's
    assert len(warnings) == 2
    assert not [line for line in lines if "Retrying (" in line or "Failed to get mlflow run" in line]
    _, state = ckpt.find_latest(str(tmp_path / "runs"), "outage")
    record = mlflow.MlflowClient(mlflow_server.uri).get_run(state.mlflow_run_id)
    assert record.info.status == "FINISHED"  # was left RUNNING
    assert "unreachable during the job" in record.data.tags[GAP_TAG]
    assert record.data.tags[MODEL_URI_TAG] == state.best_checkpoint  # what the job ended with, logged once back


def test_a_complete_run_left_running_is_closed_by_the_next_run_of_the_command(prepared_shards, ray_local, tmp_path,
                                                                              capsys):
    argv = args(prepared_shards, tmp_path, "left", "--epochs", "1")
    assert run.main(argv) == 0
    (record,) = runs(tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.update_run(record.info.run_id, status="RUNNING")  # as a job whose server was away at its end leaves it
    assert run.main(argv) == 0
    assert "already complete" in capsys.readouterr().out
    record = client.get_run(record.info.run_id)
    assert record.info.status == "FINISHED" and GAP_TAG in record.data.tags
