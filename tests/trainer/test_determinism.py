"""Reproducible, exactly-once training at a real shard count: 10 training shards, 1 and 2 workers, a killed worker and
a killed driver, shards on local disk and on the loopback S3 server.

Each rank logs the keys of every batch it trains on (``VERYDEEP_KEYS_LOG``). A run restarted from a mid-epoch
checkpoint trains the steps after that checkpoint again; the log's last entry for a (rank, step) is the one the final
weights contain, so the logs of an interrupted run, read that way, must equal the uninterrupted run's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import torch

from pipeline.manifest import load_manifest
from trainer import checkpoint as ckpt
from trainer.run import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = ["--arch", "A", "--width", "0.125", "--fc-width", "16", "--crop", "32", "--scale-jitter", "32", "40",
        "--batch-size", "8", "--init", "glorot", "--cpus-per-worker", "0.5", "--shuffle-buffer", "16",
        "--max-failures", "2", "--epochs", "2", "--checkpoint-every-steps", "1"]
STEPS_PER_EPOCH = 3  # 27 training images: 3 steps of 8 (1 worker) or of 4 + 4 (2 workers of 13 images)


@pytest.fixture(scope="module")
def many_shards(tiny_imagenet, ray_local, s3_server, tmp_path_factory) -> dict[str, str]:
    """The tiny ImageNet as 10 training shards of 2-3 images, on local disk and in an S3 bucket: manifest per place."""
    from pipeline.prepare import PrepareConfig, prepare

    out = {"local": str(tmp_path_factory.mktemp("many-shards")), "s3": s3_server.create_bucket() + "/shards"}
    for dst in out.values():
        prepare(PrepareConfig(src=str(tiny_imagenet.root), dst=dst, max_rows_per_shard=3))
    manifests = {place: f"{dst}/manifest.json" for place, dst in out.items()}
    assert len(load_manifest(manifests["s3"]).shard_uris("train")) >= 8
    return manifests


def args(manifest: str, tmp: Path, name: str, *extra: str) -> list[str]:
    """The tiny job's flags with its own storage and tracking store under ``tmp``."""
    return [*TINY, "--data", manifest, "--storage", str(tmp / "runs"), "--name", name,
            "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", *extra]


def final_weights(tmp: Path, name: str) -> dict[str, torch.Tensor]:
    uri, state = ckpt.find_latest(str(tmp / "runs"), name)
    assert state.epoch == 2 and state.step == 2 * STEPS_PER_EPOCH, (uri, state.epoch, state.step)
    return ckpt.read_weights(uri)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def trained_keys(log_dir: Path) -> dict[tuple[int, int, int], tuple[str, ...]]:
    """(epoch, step, rank) -> the keys of the batch in the final weights (a step trained again overrides)."""
    out = {}
    for path in sorted(log_dir.glob("rank*.log")):
        rank = int(path.stem.removeprefix("rank"))
        for line in path.read_text().splitlines():
            epoch, step, *keys = line.split(" ")
            out[int(epoch), int(step), rank] = tuple(keys)
    return out


def assert_exactly_once(keys: dict[tuple[int, int, int], tuple[str, ...]], workers: int, all_keys: set[str]) -> None:
    """Every epoch trains each image at most once, on all its steps and ranks, and drops only the remainder."""
    for epoch in (0, 1):
        steps = {(s, r) for e, s, r in keys if e == epoch}
        assert len(steps) == STEPS_PER_EPOCH * workers, f"epoch {epoch}: steps/ranks {sorted(steps)}"
        seen = Counter(k for (e, _, _), batch in keys.items() if e == epoch for k in batch)
        assert max(seen.values()) == 1, f"epoch {epoch}: trained twice: {[k for k, n in seen.items() if n > 1]}"
        assert set(seen) <= all_keys
        assert len(seen) == STEPS_PER_EPOCH * 8  # 27 images, 24 in full batches: the remainder of 3 is dropped


def train_keys(manifest: str) -> set[str]:
    import pyarrow.parquet as pq

    from pipeline import storage

    keys = set()
    for uri in load_manifest(manifest).shard_uris("train"):
        fs, path = storage.resolve(uri)
        keys |= set(pq.read_table(path, filesystem=fs, columns=["key"]).column("key").to_pylist())
    return keys


def kill_when(path_glob: Path, match: str, killed: list[int], proc: subprocess.Popen | None = None) -> None:
    """Once a checkpoint matching ``path_glob`` exists, SIGKILL the driver ``proc`` or every process whose command
    line contains ``match``."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not killed:
        if list(path_glob.parent.glob(path_glob.name)):
            if proc is not None:
                proc.kill()
                killed.append(proc.pid)
            for p in psutil.process_iter(["cmdline"]) if proc is None else ():
                if any(match in part for part in p.info["cmdline"] or []):
                    p.kill()
                    killed.append(p.pid)
        time.sleep(0.1)


def test_one_worker_reruns_and_a_killed_worker_end_bit_identical(many_shards, ray_local, tmp_path, monkeypatch):
    manifest = many_shards["local"]
    streamed = ["--cache-mb", "0"]  # as for ImageNet: Ray Data's seeded file shuffle on every epoch's read
    logs = {name: tmp_path / f"keys-{name}" for name in ("ref", "crash")}
    logs["ref"].mkdir()
    monkeypatch.setenv("VERYDEEP_KEYS_LOG", str(logs["ref"]))
    assert main(args(manifest, tmp_path, "ref", *streamed)) == 0
    ref = final_weights(tmp_path, "ref")
    assert_exactly_once(trained_keys(logs["ref"]), 1, train_keys(manifest))

    # The same command again, its worker killed in the second epoch after that epoch's first checkpoint. Up to the
    # kill it is a plain rerun (its keys are compared with the first run's); then Ray Train restarts the worker
    # from that checkpoint, and the split must restart at epoch 2's order, not the first epoch's.
    logs["crash"].mkdir()
    monkeypatch.setenv("VERYDEEP_KEYS_LOG", str(logs["crash"]))
    monkeypatch.setenv("VERYDEEP_STEP_DELAY_S", "1.0")
    killed: list[int] = []
    target = tmp_path / "runs" / "crash" / f"checkpoint_e001_s{STEPS_PER_EPOCH + 1:08d}" / "train_state.json"
    killer = threading.Thread(target=kill_when, args=(target, "RayTrainWorker", killed), daemon=True)
    killer.start()
    assert main(args(manifest, tmp_path, "crash", *streamed)) == 0
    killer.join(timeout=5)
    assert killed, "no training worker was found to kill"
    assert_same_weights(ref, final_weights(tmp_path, "crash"))
    assert trained_keys(logs["crash"]) == trained_keys(logs["ref"])


def driver(argv: list[str], log_dir: Path, ray_tmp: str) -> subprocess.Popen:
    """``python -m trainer.run`` as a user runs it, with a Ray of its own (its own temp dir) that dies with it."""
    env = {**os.environ, "VERYDEEP_KEYS_LOG": str(log_dir), "RAY_TMPDIR": ray_tmp, "VERYDEEP_STEP_DELAY_S": "0.5"}
    env.pop("RAY_ADDRESS", None)
    with open(log_dir.with_suffix(".out"), "a") as out:  # a file, not a pipe: nobody reads it while it runs
        return subprocess.Popen([sys.executable, "-m", "trainer.run", *argv, "--ray-address", "local"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, log_dir: Path) -> str:
    """Wait for the driver; its exit code must be 0. Returns what it printed."""
    proc.wait(timeout=900)
    out = log_dir.with_suffix(".out").read_text()
    assert proc.returncode == 0, out[-3000:]
    return out


def of_session(p: psutil.Process, ray_tmp: str) -> bool:
    """Whether ``p`` belongs to the Ray that uses ``ray_tmp`` (Ray's workers rename themselves; their environment
    keeps RAY_TMPDIR)."""
    try:
        return any(ray_tmp in part for part in p.cmdline()) or p.environ().get("RAY_TMPDIR") == ray_tmp
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def wait_gone(ray_tmp: str, timeout: float = 60) -> list[str]:
    """Wait until no process refers to ``ray_tmp``; returns those still there at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p.info["name"] for p in psutil.process_iter(["name"]) if of_session(p, ray_tmp)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@pytest.mark.s3
def test_two_workers_on_s3_a_killed_driver_ends_bit_identical(many_shards, tmp_path):
    manifest = many_shards["s3"]
    # Small enough to be cached in Ray's object store (the default for small data): read once, blocks reordered
    # each epoch.
    two = ["--workers", "2"]
    ray_tmp = tempfile.mkdtemp(prefix="vd-ray-", dir="/tmp")
    try:
        logs = {name: tmp_path / f"keys-{name}" for name in ("ref", "crash")}
        logs["ref"].mkdir()
        finish(driver(args(manifest, tmp_path, "ref", *two), logs["ref"], ray_tmp), logs["ref"])
        assert wait_gone(ray_tmp) == []
        ref = final_weights(tmp_path, "ref")
        assert_exactly_once(trained_keys(logs["ref"]), 2, train_keys(manifest))

        # The same command again, kill -9 of its driver in the second epoch, then the same command once more: it
        # resumes from the mid-epoch checkpoint. Its first part is a rerun (its logged keys are compared too).
        logs["crash"].mkdir()
        target = tmp_path / "runs" / "crash" / f"checkpoint_e001_s{STEPS_PER_EPOCH + 1:08d}" / "train_state.json"
        proc = driver(args(manifest, tmp_path, "crash", *two), logs["crash"], ray_tmp)
        killed: list[int] = []
        kill_when(target, "", killed, proc)
        proc.wait(timeout=60)
        assert killed and proc.returncode == -9
        assert wait_gone(ray_tmp, timeout=10) == [], "the killed driver's Ray outlived it by 10 s"
        _, state = ckpt.find_latest(str(tmp_path / "runs"), "crash")
        assert state.step < 2 * STEPS_PER_EPOCH, "the driver was killed too late to test a resume"
        out = finish(driver(args(manifest, tmp_path, "crash", *two), logs["crash"], ray_tmp), logs["crash"])
        assert f"resuming after epoch {state.epoch}" in out
        assert_same_weights(ref, final_weights(tmp_path, "crash"))
        assert trained_keys(logs["crash"]) == trained_keys(logs["ref"])
    finally:
        wait_gone(ray_tmp, timeout=10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
