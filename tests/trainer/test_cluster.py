"""The job as cluster users run it: `ray job submit` to a real `ray start --head`, and DDP across (simulated) nodes.

Both start their own Ray processes apart from the suite's in-process Ray: a head in its own process group, and a
`ray.cluster_utils.Cluster` inside a child Python process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from trainer import checkpoint as ckpt

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
TINY = ["--width", "0.125", "--fc-width", "16", "--crop", "32", "--scale", "36", "--batch-size", "8", "--init",
        "glorot", "--shuffle-buffer", "16", "--epochs", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(**extra: str) -> dict[str, str]:
    """The environment a user has: the venv first on PATH (Ray runs jobs with the `python` it finds there)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled", **extra}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture
def ray_tmpdir() -> Iterator[str]:
    """A Ray temp dir of the test's own, so that its head's address file is not left where other commands look
    (short: Ray's socket paths must stay under 108 bytes)."""
    path = tempfile.mkdtemp(prefix="vd-ray-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ray_job_submit_runs_the_trainer_on_a_real_head(prepared_shards, tmp_path, ray_tmpdir):
    dashboard = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port()}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host",
         "127.0.0.1", "--include-dashboard", "true", "--num-cpus", "4", "--disable-usage-stats",
         *[str(x) for kv in ports.items() for x in kv]],
        env=job_env(RAY_TMPDIR=ray_tmpdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        status = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the job API answers once the dashboard is up
            status = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=job_env(),
                                    capture_output=True, text=True)
            if status.returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(2)
        assert status is not None and status.returncode == 0, status.stderr[-2000:] if status else "no head"

        # The job's working directory is Ray's (--working-dir is unpacked under the head's session directory) and
        # goes with the job: the default tracking store and a relative --storage are refused, in one line.
        from ray.job_submission import JobStatus, JobSubmissionClient

        refused = {"sqlite:///mlflow.db": [], "./runs": ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]}
        for i, (relative, flags) in enumerate(refused.items()):
            job = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", f"verydeep-rel-{i}",
                 "--working-dir", str(ROOT), "--", "python", "-m", "trainer.run", "--smoke", *TINY, "--data",
                 prepared_shards, *flags], env=job_env(), capture_output=True, text=True, timeout=300)
            assert job.returncode != 0, job.stdout[-3000:]
            # One line, printed again in the CLI's "last available logs" of the failed job.
            (error,) = {line for line in job.stdout.splitlines() if line.startswith("error: ")}
            assert f"{relative} is relative: inside a Ray job" in error, job.stdout[-3000:]
            assert "pass an absolute path on shared storage or s3://" in error or "pass an http(s)://" in error
            assert JobSubmissionClient(address).get_job_status(f"verydeep-rel-{i}") == JobStatus.FAILED
        assert not (tmp_path / "mlflow.db").exists()  # refused before anything was written

        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", "verydeep-e-smoke", "--",
             "python", "-m", "trainer.run", "--arch", "E", "--smoke", *TINY, "--data", prepared_shards,
             "--storage", str(tmp_path / "runs"), "--tracking-uri", tracking, "--cpus-per-worker", "0.5"],
            env=job_env(), capture_output=True, text=True, timeout=900)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-2000:]
        assert "done: E-S36-smoke after 2 epochs" in submit.stdout
        assert JobSubmissionClient(address).get_job_status("verydeep-e-smoke") == JobStatus.SUCCEEDED

        _, state = ckpt.find_latest(str(tmp_path / "runs"), "E-S36-smoke")
        run = mlflow.MlflowClient(tracking_uri=tracking).get_run(state.mlflow_run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["model.arch"] == "E" and run.data.params["run.smoke"] == "True"
        assert run.data.params["derived.train_scale"] == "36"
        assert {"train/loss", "val/top1_err", "val/top5_err", "train/lr", "perf/images_per_s"} <= set(run.data.metrics)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


MULTI_NODE = textwrap.dedent("""
    import os, sys
    from ray.cluster_utils import Cluster

    # A head that runs nothing and two 3-CPU nodes: workers of 2 CPUs cannot share a node, and each node keeps
    # one CPU for Ray Data.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=3) for _ in range(2)]
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    from trainer.run import main
    import ray

    code = main(sys.argv[1:])
    ray.shutdown()  # the driver leaves first, then the nodes go
    cluster.shutdown()
    sys.exit(code)
""")


def test_ddp_across_two_nodes_keeps_replicas_identical(prepared_shards, tmp_path):
    argv = ["--arch", "A", *TINY, "--workers", "2", "--cpus-per-worker", "2", "--data", prepared_shards,
            "--storage", str(tmp_path / "runs"), "--name", "two-nodes",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    proc = subprocess.run([sys.executable, "-c", MULTI_NODE, *argv], env=job_env(), capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 CPU worker(s), batch 8 (4/worker" in proc.stdout
    _, state = ckpt.find_latest(str(tmp_path / "runs"), "two-nodes")
    assert state.epoch == 2 and state.step == 6  # 27 images: 13 per worker, 3 steps of 4 per epoch
    # After every epoch the sum of all weights is compared across the two replicas: equal to the last bit.
    assert [h["replica_divergence"] for h in state.history] == [0.0, 0.0]
    assert all(h["val_images"] == 8 for h in state.history)  # the val split: each image once over both workers
