"""Every socket a training job listens on is on the node's own address (loopback on one machine), never on all
interfaces: Ray's processes, torch.distributed's store and gloo in the Train workers, the MLflow server and the S3
stand-in it talks to."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = ["--arch", "A", "--width", "0.125", "--fc-width", "16", "--crop", "32", "--scale-jitter", "32", "40",
        "--batch-size", "8", "--init", "glorot", "--shuffle-buffer", "16", "--epochs", "2"]


def label(proc: psutil.Process) -> str:
    """A process as a person reads it in a listing: ``ray::RayTrainWorker``, ``raylet``, ``python -m trainer.run``."""
    argv = proc.cmdline()
    if argv and argv[0].startswith("ray::"):
        return argv[0].split(".")[0]  # ray::RayTrainWorker.run_train_fn -> the actor
    if "-m" in argv[:-1]:
        return f"{proc.name()} -m {argv[argv.index('-m') + 1]}"
    return proc.name()


def listening(roots: list[int]) -> dict[tuple[int, str, int], str]:
    """Every LISTEN socket of the processes ``roots`` and their descendants: (pid, address, port) -> process."""
    tree: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            tree.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        except psutil.NoSuchProcess:
            pass
    found = {}
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in tree:
            try:
                found[(conn.pid, conn.laddr.ip, conn.laddr.port)] = label(tree[conn.pid])
            except psutil.Error:  # gone since the listing
                pass
    return found


def loopback(ip: str) -> bool:
    """127.0.0.1, ::1, or 127.0.0.1 as an IPv4-mapped IPv6 address (a dual-stack socket bound to loopback)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@pytest.fixture
def ray_tmpdir() -> Iterator[str]:
    """A RAY_TMPDIR of its own, so that the job starts its own Ray (never the suite's, nor a head running on the
    machine); short, as Ray's socket paths under it must fit AF_UNIX's 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="vd-ray-") as path:
        yield path


def test_a_two_worker_job_listens_on_loopback_only(prepared_shards, s3_server, mlflow_server, ray_tmpdir, tmp_path):
    """A 2-worker job (its own local Ray) with checkpoints on the S3 stand-in and runs on an MLflow server: while it
    trains, list what every process of the job, of the servers and of this test listens on."""
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir, "VERYDEEP_STEP_DELAY_S": "1.0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "trainer.run", *TINY, "--workers", "2", "--cpus-per-worker", "0.5",
           "--data", prepared_shards, "--storage", f"{s3_server.create_bucket()}/runs", "--name", "sockets",
           "--tracking-uri", mlflow_server.uri]
    log = tmp_path / "job.log"
    with open(log, "wb") as out:
        job = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    seen: dict[tuple[int, str, int], str] = {}
    most_per_worker = 0  # the most sockets one Train worker had open at once: Ray's, the store's, gloo's
    try:
        deadline = time.monotonic() + 600
        while job.poll() is None and time.monotonic() < deadline:
            # This process too: the moto server runs in it, beside the suite's Ray driver.
            now = listening([job.pid, mlflow_server.proc.pid, os.getpid()])
            workers = [pid for (pid, _, _), name in now.items() if name == "ray::RayTrainWorker"]
            most_per_worker = max([most_per_worker, *(workers.count(pid) for pid in workers)])
            seen.update(now)
            time.sleep(0.25)
    finally:
        if job.poll() is None:
            job.kill()
        job.wait(timeout=60)
    output = log.read_text(errors="replace")
    assert job.returncode == 0, output[-3000:]
    assert "on 2 CPU worker(s)" in output

    listing = "\n".join(f"{name} (pid {pid}) {ip}:{port}" for (pid, ip, port), name in sorted(seen.items()))
    print(listing)
    trainers = {pid for (pid, _, _), name in seen.items() if name == "ray::RayTrainWorker"}
    assert len(trainers) == 2, listing
    assert most_per_worker >= 3, "the process group's sockets were never seen:\n" + listing  # it ran while we looked
    assert {"gcs_server", "raylet"} <= set(seen.values()), listing
    ports = {port for (_, _, port) in seen}
    for server in (s3_server.endpoint, mlflow_server.uri):
        assert int(server.rsplit(":", 1)[1]) in ports, f"{server} not seen:\n{listing}"
    wildcard = [f"{name} (pid {pid}) {ip}:{port}" for (pid, ip, port), name in seen.items()
                if ipaddress.ip_address(ip.split("%")[0]).is_unspecified]
    assert not wildcard, "listening on all interfaces:\n" + "\n".join(wildcard)
    elsewhere = [f"{name} (pid {pid}) {ip}:{port}" for (pid, ip, port), name in seen.items() if not loopback(ip)]
    assert not elsewhere, "listening beyond loopback on one machine:\n" + "\n".join(elsewhere)
