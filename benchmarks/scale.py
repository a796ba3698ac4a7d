"""ImageNet's counts on one machine: how each stage's cost grows from 1 % of ImageNet to all of it.

    python benchmarks/scale.py --fraction 0.01     # the stages that grow with the images, at 1 % of ImageNet's counts
    python benchmarks/scale.py --fraction 1.0      # 1,281,167 + 50,000 tiny JPEGs (the tree is built once, ~1.5 GB)
    python benchmarks/scale.py --fixed             # checkpoint, sweep store + report, MLflow: full size, once
    python benchmarks/scale.py --summary           # growth exponents and the log-log plot from the results written

Writes ``benchmarks/results/scale_f<F>.json`` (or ``scale_fixed.json``; ``--json`` elsewhere, ``--no-json`` none).

The pixels are not the question (the decode benchmarks cover them), the counts are: the source tree has ImageNet's
layout and counts at fraction F (1,000 wnids, ``train/<wnid>/<wnid>_<n>.JPEG`` with class sizes 732-1,300 as uneven
as ImageNet's, a flat ``val/`` of F x 50,000 images with ``LOC_val_solution.csv``), made of tiny JPEGs (16-48 px
shorter side, aspect 0.6-1.7). It is built once under ``--work`` and reused. Every stage runs the project's own code:

- ``listing``: ``pipeline.imagenet.scan_source`` over the source tree (what prepare starts with);
- ``prepare_local`` / ``prepare_s3``: ``pipeline.prepare.prepare`` into a local directory and into a bucket of a
  moto S3 server on 127.0.0.1 (its own process), the shard size chosen so that F = 1.0 gives ImageNet's ~550 training
  shards (the same size at every F, so the shard count grows with F); the manifest's bytes;
- ``epochs``: Ray Data epochs over the training shards on S3 (``trainer.run.SplitSource`` streaming, never cached,
  ``pipeline.dataset.SplitDataConfig``, ``iter_epoch`` with the trainer's batch of 256 over 2 Ray Train workers and its
  shuffle buffer; rows undecoded): time to the first batch, the fixed cost per epoch (wall time less rows at the
  steady rate), rows/s, and exactly-once (no key twice in an epoch across the workers, every key a training key, the
  only keys missing those the equal split and the last partial batch drop); then validation's start-up (time to the
  first validation batch) and its full pass;
- ``checkpoint`` (``--fixed``): a full-width VGG-E (1,000 classes) with its SGD momentum written to S3 by
  ``trainer.loop.save`` inside a Ray Train worker, and read back as a resume does (``trainer.checkpoint``'s
  ``latest_in``, ``fetch_checkpoint``, ``read_weights``, ``read_optimizer``);
- ``sweep_*`` (``--fixed``): the sweep's plan (``evaluation.sweep.pending_units`` over the posterior store) and store
  (``PosteriorStore.write``) for 50,000 val images x 1,000 classes x 6 nets x 3 Q x dense + multi-crop, with synthetic
  posteriors over the F = 1.0 val shards' keys and labels (a net's forward pass is not the question), then the report
  (``evaluation.report.build_report`` through the sweep's loader) and its files;
- ``mlflow_*`` (``--fixed``): the metrics a 74-epoch run of 5,005 steps per epoch logs at the trainer's rate (train
  metrics every tenth of an epoch, validation every epoch, MLflow's system metrics every 10 s over the run's hours),
  logged through ``trainer.tracking.Tracker`` into a real ``mlflow server`` (sqlite store), its rows, and the time
  the run page's metric requests take through the REST API (the sampled history per key the charts ask for, and the
  full history of every key).

Each stage records wall time, CPU seconds and peak memory of the driver (this process; its peak RSS reset at the
stage's start through /proc), of Ray's processes (GCS, raylet, workers; sampled every 0.5 s) and of the S3 server,
and the bytes it wrote. ``--summary`` fits cost = a * size^k per stage over the fractions run (size: the stage's
items) and draws cost against size on log-log axes.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # a bar per operator and split, redrawn for minutes

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import cpu_model, use_s3, write_results  # noqa: E402  (benchmarks/, on sys.path as the script's folder)

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
FRACTIONS = (0.01, 0.1, 1.0)
# ImageNet (ILSVRC-2012): training images, classes, the largest and smallest class, validation images, shards.
TRAIN_IMAGES, CLASSES, LARGEST, SMALLEST, VAL_IMAGES, TRAIN_SHARDS = 1_281_167, 1000, 1300, 732, 50_000, 550
POOL = 4096  # distinct tiny JPEGs, cycled through the files
BUCKET = "scale"
MiB = 1 << 20
# Targets of the issue this benchmark answers.
MAX_EXPONENT, MAX_DRIVER_MB, MAX_FIRST_BATCH_S, MAX_REPORT_MB = 1.1, 2048, 5.0, 4096
# The sweep at full size: 6 nets x 3 Q x (dense, multi-crop).
SWEEP_NETS = (("A", 256, 256), ("B", 256, 256), ("C", 384, 384), ("D", 256, 512), ("E", 256, 512), ("E", 384, 384))
# A 74-epoch run at the paper's batch of 256 on ImageNet; MLflow's default system-metrics interval.
EPOCHS, STEPS_PER_EPOCH, SYSTEM_INTERVAL_S = 74, math.ceil(TRAIN_IMAGES / 256), 10.0


# ---- the ImageNet-shaped tree ------------------------------------------------------------------------------------


def class_sizes() -> np.ndarray:
    """ImageNet's 1,000 training class sizes in shape: most classes 1,300, a tail down to 732, 1,281,167 in all."""
    deficit = CLASSES * LARGEST - TRAIN_IMAGES  # 18,833 images fewer than 1,300 per class
    span = LARGEST - SMALLEST
    # A quadratic tail (as ImageNet's: few classes near the minimum, more just under 1,300), rounded, then +-1 on its
    # inner classes until the total is exact.
    def tail_of(k: int) -> np.ndarray:
        return np.round(span * (1 - np.arange(k) / k) ** 2).astype(np.int64)

    k = min(range(2, 400), key=lambda k: abs(int(tail_of(k).sum()) - deficit))
    tail = tail_of(k)
    rest = deficit - int(tail.sum())
    tail[1:1 + abs(rest)] += int(np.sign(rest))
    sizes = np.full(CLASSES, LARGEST, np.int64)
    order = np.random.default_rng(0).permutation(CLASSES)  # the small classes anywhere among the wnids
    sizes[order[:k]] -= tail
    assert sizes.sum() == TRAIN_IMAGES and sizes.min() == SMALLEST and sizes.max() == LARGEST
    return sizes


def wnids() -> list[str]:
    """1,000 wnid-shaped class names, sorted (prepare's labels are the sorted wnids)."""
    return [f"n{1440764 + 9973 * i:08d}" for i in range(CLASSES)]


def jpeg_pool() -> list[bytes]:
    """POOL distinct tiny RGB JPEGs: shorter side 16-48 px, aspect 0.6-1.7, smooth colour with noise."""
    from PIL import Image

    rng = np.random.default_rng(1)
    pool = []
    for _ in range(POOL):
        short, aspect = int(rng.integers(16, 49)), float(rng.uniform(0.6, 1.7))
        h, w = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.uniform(0, 255, 3) + rng.uniform(-80, 80, 3) * yy[..., None] + rng.uniform(-80, 80, 3) * xx[..., None]
        pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = __import__("io").BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
        pool.append(buf.getvalue())
    return pool


def pool_index(n: np.ndarray) -> np.ndarray:
    """Which pool image file number ``n`` gets (a fixed scramble, the same at every fraction)."""
    return (n.astype(np.uint64) * np.uint64(2654435761) >> np.uint64(7)) % np.uint64(POOL)


def train_numbers(fraction: float) -> list[np.ndarray]:
    """Per class, the global numbers of its training files at ``fraction`` (a prefix of the full class)."""
    sizes = class_sizes()
    counts = np.maximum(1, np.round(sizes * fraction)).astype(np.int64)
    return [c * LARGEST + np.arange(1, n + 1) for c, n in enumerate(counts)]


def shard_target_mb() -> float:
    """The shard size (MiB of source bytes) that packs the full training set into ~550 shards."""
    sizes = np.array([len(b) for b in jpeg_pool()], np.int64)
    total = int(sum(sizes[pool_index(n)].sum() for n in train_numbers(1.0)))
    return total / TRAIN_SHARDS / MiB


def build_tree(root: Path, fraction: float) -> dict:
    """The ImageNet-shaped tree at ``fraction`` under ``root`` (reused when complete); what it holds."""
    marker = root / "complete.json"
    if marker.exists():
        return json.loads(marker.read_text())
    if root.exists():
        shutil.rmtree(root)  # a half-built tree from an interrupted run
    pool, names = jpeg_pool(), wnids()
    t0, files, nbytes = time.perf_counter(), 0, 0
    for c, numbers in enumerate(train_numbers(fraction)):
        folder = root / "train" / names[c]
        folder.mkdir(parents=True)
        for n, p in zip(numbers.tolist(), pool_index(numbers).tolist()):
            (folder / f"{names[c]}_{n}.JPEG").write_bytes(pool[p])
            files, nbytes = files + 1, nbytes + len(pool[p])
        if c % 100 == 99:
            print(f"tree: {c + 1}/{CLASSES} classes, {files} files ({time.perf_counter() - t0:.0f} s)", flush=True)
    val = max(1, round(VAL_IMAGES * fraction))
    (root / "val").mkdir()
    classes = np.random.default_rng(2).permutation(CLASSES)
    lines = ["ImageId,PredictionString"]
    for j in range(1, val + 1):
        image = f"ILSVRC2012_val_{j:08d}"
        data = pool[int(pool_index(np.array([10_000_000 + j]))[0])]
        (root / "val" / f"{image}.JPEG").write_bytes(data)
        lines.append(f"{image},{names[classes[(j - 1) % CLASSES]]} 1 1 10 10")
        files, nbytes = files + 1, nbytes + len(data)
    (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    info = {"fraction": fraction, "train_images": files - val, "val_images": val, "classes": CLASSES,
            "bytes": nbytes, "mean_jpeg_bytes": round(nbytes / files, 1), "built_s": round(time.perf_counter() - t0, 1)}
    marker.write_text(json.dumps(info))
    return info


# ---- measuring a stage -------------------------------------------------------------------------------------------


def _reset_peak(pid: int | str) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux: resets the process's peak RSS (VmHWM)
    except OSError:
        pass


def _peak_mb(pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Stage:
    """Wall time, CPU seconds and peak memory of one stage: this process exactly, its child processes (Ray's and the
    S3 server's) sampled every ``every`` seconds, their resident memory less what they share (the object store)."""

    def __init__(self, name: str, service_pid: int | None, service: str = "s3_server", every: float = 0.5) -> None:
        self.name, self.s3_pid, self.service, self.every = name, service_pid, service, every
        self.record: dict[str, Any] = {}
        self._cpu: dict[int, tuple[float, float]] = {}  # pid -> (CPU s when first seen in this stage, latest)
        self._ray_peak = self._s3_peak = self._ray_largest = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        ray_rss = 0.0
        for p in psutil.Process().children(recursive=True):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    m = p.memory_info()
                    # Private memory: the object store's shared pages would count once in every process mapping them.
                    cpu, rss = t.user + t.system, (m.rss - m.shared) / MiB
                    new = p.create_time() >= self._start_epoch
            except psutil.Error:
                continue
            first = self._cpu.get(p.pid, (0.0 if new else cpu, cpu))[0]
            self._cpu[p.pid] = (first, cpu)
            if p.pid == self.s3_pid:
                self._s3_peak = max(self._s3_peak, rss)
            else:
                ray_rss += rss
                self._ray_largest = max(self._ray_largest, rss)
        self._ray_peak = max(self._ray_peak, ray_rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> Stage:
        _reset_peak("self")
        self._rss_start = psutil.Process().memory_info().rss / MiB  # the peak's floor: what earlier stages left
        self._start_epoch = time.time()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._wall, self._proc = time.perf_counter(), time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu = time.perf_counter() - self._wall, time.process_time() - self._proc
        self._stop.set()
        self._thread.join()
        self._sample()
        s3 = self._cpu.get(self.s3_pid or -1, (0.0, 0.0))
        ray_cpu = sum(last - first for pid, (first, last) in self._cpu.items() if pid != self.s3_pid)
        self.record.update({"wall_s": round(wall, 2), "driver_cpu_s": round(cpu, 2),
                            "driver_peak_mb": round(_peak_mb() or 0.0, 1), "driver_start_mb": round(self._rss_start, 1),
                            "ray_cpu_s": round(ray_cpu, 2), "ray_peak_mb": round(self._ray_peak, 1),
                            "ray_largest_process_mb": round(self._ray_largest, 1)})
        if self.s3_pid:
            self.record.update({f"{self.service}_cpu_s": round(s3[1] - s3[0], 2),
                                f"{self.service}_peak_mb": round(self._s3_peak, 1)})
        if exc[0] is None:
            print(f"{self.name}: " + ", ".join(f"{k} {v}" for k, v in self.record.items()), flush=True)


# ---- services ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    """Until something listens on ``port`` (or ``proc`` died, or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.2)


@contextmanager
def s3_server() -> Iterator[subprocess.Popen]:
    """A moto S3 server on loopback in its own process (its memory and CPU apart from the driver's), with the AWS
    environment pointing at it (inherited by Ray's workers) and the bucket created."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "the S3 server")
        endpoint = f"http://127.0.0.1:{port}"
        use_s3(endpoint, BUCKET)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def start_ray(cpus: int) -> None:
    """A local Ray on loopback, as the project's commands start one."""
    from pipeline import cluster

    cluster.connect("local", local_cpus=cpus)


def tree_bytes(path: Path) -> int:
    """Bytes of the files under a local directory."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- stages that grow with the images ----------------------------------------------------------------------------


def epoch_worker(config: dict) -> None:
    """Inside a Ray Train worker: timed epochs over its split of the training set (keys written per epoch for the
    exactly-once check), then the validation split's start-up and pass."""
    import ray.train

    from pipeline.dataset import TRAIN, VAL, iter_epoch

    rank = ray.train.get_context().get_world_rank()
    train, val = ray.train.get_dataset_shard(TRAIN), ray.train.get_dataset_shard(VAL)
    out: dict[str, Any] = {"epochs": []}
    for epoch in range(config["epochs"]):
        rows, first, t0 = 0, None, time.perf_counter()
        with open(f"{config['out']}/keys-e{epoch}-r{rank}.txt", "w") as f:
            for batch in iter_epoch(train, batch_size=config["batch"], epoch=epoch, seed=0, rank=rank,
                                    shuffle_buffer=config["shuffle_buffer"], drop_last=True):
                if first is None:
                    first, t1, rows1 = time.perf_counter() - t0, time.perf_counter(), len(batch["key"])
                f.write("\n".join(map(str, batch["key"])) + "\n")
                rows += len(batch["key"])
        wall = time.perf_counter() - t0
        out["epochs"].append({"rows": rows, "wall_s": wall, "first_batch_s": first,
                              "steady_rows_per_s": (rows - rows1) / max(time.perf_counter() - t1, 1e-9)})
    rows, first, t0 = 0, None, time.perf_counter()
    for batch in iter_epoch(val, batch_size=32, epoch=0, seed=0, rank=rank):
        first = first if first is not None else time.perf_counter() - t0
        rows += len(batch["key"])
    out["val"] = {"rows": rows, "first_batch_s": first, "wall_s": time.perf_counter() - t0}
    Path(f"{config['out']}/rank{rank}.json").write_text(json.dumps(out))


def check_exactly_once(out: Path, epochs: int, workers: int, batch: int, all_keys: set[str]) -> list[dict]:
    """Per epoch: every key trained on is a training key, none twice across the workers, and the keys missing are
    no more than the equal split (< workers) and each worker's last partial batch (< batch) drop."""
    checks = []
    for e in range(epochs):
        seen: list[str] = []
        for r in range(workers):
            seen += (out / f"keys-e{e}-r{r}.txt").read_text().split()
        unique = set(seen)
        missing = len(all_keys) - len(unique & all_keys)
        ok = len(unique) == len(seen) and unique <= all_keys and missing <= (workers - 1) + workers * (batch - 1)
        checks.append({"epoch": e, "keys_seen": len(seen), "duplicates": len(seen) - len(unique),
                       "foreign": len(unique - all_keys), "missing": missing, "exactly_once": ok})
    return checks


def run_epochs(manifest: Any, args: argparse.Namespace, work: Path) -> dict:
    """Ray Data epochs over the S3 shards with 2 Ray Train workers; timings per worker and the exactly-once check."""
    import pyarrow.parquet as pq
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline import storage
    from pipeline.dataset import TRAIN, VAL, SplitDataConfig
    from trainer.config import compose
    from trainer.distributed import torch_config
    from trainer.run import SplitSource

    defaults = compose(None, {"data": {"data": manifest.root}})
    out = Path(tempfile.mkdtemp(prefix="epochs-", dir=work))
    workers, batch = args.workers, defaults.optim.batch_size // args.workers
    splits = {TRAIN: SplitSource(tuple(manifest.shard_uris(TRAIN)), 0, None, False, str(out), "epochs"),
              VAL: SplitSource(tuple(manifest.shard_uris(VAL)), None, None, False, str(out), "epochs")}
    trainer = TorchTrainer(
        epoch_worker,
        train_loop_config={"epochs": args.epochs, "batch": batch, "shuffle_buffer": defaults.data.shuffle_buffer,
                           "out": str(out)},
        torch_config=torch_config(use_gpu=False),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": args.worker_cpus}),
        run_config=ray.train.RunConfig(name="epochs", storage_path=str(out / "ray")),
        datasets=splits, dataset_config=SplitDataConfig())
    trainer.fit()
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(workers)]
    keys: set[str] = set()
    for uri in manifest.shard_uris(TRAIN):
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            keys.update(pq.read_table(f, columns=["key"]).column("key").to_pylist())
    checks = check_exactly_once(out, args.epochs, workers, batch, keys)
    epochs = []
    for e in range(args.epochs):
        per = [r["epochs"][e] for r in ranks]
        rows, wall = sum(p["rows"] for p in per), max(p["wall_s"] for p in per)
        steady = sum(p["steady_rows_per_s"] for p in per)
        epochs.append({"epoch": e, "rows": rows, "wall_s": round(wall, 2), "rows_per_s": round(rows / wall, 1),
                       "steady_rows_per_s": round(steady, 1),
                       "first_batch_s": round(max(p["first_batch_s"] for p in per), 2),
                       "fixed_s": round(wall - rows / steady, 2), **checks[e]})
    shutil.rmtree(out, ignore_errors=True)
    val = [r["val"] for r in ranks]
    return {"workers": workers, "batch_per_worker": batch, "worker_cpus": args.worker_cpus,
            "shuffle_buffer": defaults.data.shuffle_buffer, "epochs": epochs,
            "exactly_once": all(c["exactly_once"] for c in checks),
            "val": {"rows": sum(v["rows"] for v in val), "first_batch_s": round(max(v["first_batch_s"] for v in val if v["rows"]), 2),
                    "wall_s": round(max(v["wall_s"] for v in val), 2)}}


def run_fraction(args: argparse.Namespace) -> dict:
    """Tree, listing, prepare (local and S3), Ray Data epochs from S3 at one fraction of ImageNet's counts."""
    from pipeline.imagenet import scan_source
    from pipeline.manifest import MANIFEST_NAME
    from pipeline.prepare import PrepareConfig, prepare

    f = args.fraction
    work = args.work / f"f{f:g}"
    work.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}
    t0 = time.perf_counter()
    tree = build_tree(work / "tree", f)
    print(f"tree: {tree['train_images']} train + {tree['val_images']} val JPEGs, {tree['bytes'] / MiB:.0f} MiB "
          f"({time.perf_counter() - t0:.0f} s; built in {tree['built_s']} s)", flush=True)
    target = shard_target_mb()
    src = str(work / "tree")
    if args.stages_only == "tree":
        return {"tree": tree}

    with Stage("listing", None) as s:
        listing = scan_source(src)
    s.record.update(items=sum(len(v) for v in listing.files.values()), skipped=len(listing.skipped))
    stages["listing"] = s.record
    del listing

    with s3_server() as moto:
        start_ray(args.ray_cpus)
        local = work / "shards"
        shutil.rmtree(local, ignore_errors=True)
        for name, dst in (("prepare_local", str(local)), ("prepare_s3", f"s3://{BUCKET}/shards")):
            with Stage(name, moto.pid) as s:
                manifest = prepare(PrepareConfig(src=src, dst=dst, target_shard_mb=target))
            from pipeline import storage

            text = storage.read_bytes(storage.join(dst, MANIFEST_NAME))
            s.record.update(items=sum(sp.count for sp in manifest.splits.values()),
                            train_shards=len(manifest.split("train").shards),
                            val_shards=len(manifest.split("val").shards),
                            bytes=sum(sh.bytes for sp in manifest.splits.values() for sh in sp.shards),
                            manifest_bytes=len(text), skipped=len(manifest.skipped))
            stages[name] = s.record
        with Stage("epochs", moto.pid) as s:
            result = run_epochs(manifest, args, work)
        s.record.update(items=manifest.split("train").count * args.epochs, **result)
        stages["epochs"] = s.record
        import ray

        ray.shutdown()
    return {"tree": tree, "shard_target_mb": round(target, 3), "stages": stages}


# ---- stages of fixed size ----------------------------------------------------------------------------------------


def checkpoint_worker(config: dict) -> None:
    """Inside a Ray Train worker: a full-width VGG-E with momentum written by the trainer's save, read back as a resume."""
    import torch

    from trainer import checkpoint as ckpt
    from trainer.config import TrainConfig, compose
    from trainer.distributed import current
    from trainer.loop import JobInfo, make_model, save
    from trainer.tracking import Tracker

    cfg: TrainConfig = compose(None, {"model": {"arch": "E"}, "data": {"data": config["run_dir"]}})
    info = JobInfo(mean=(124.0, 117.0, 104.0), eigval=(0.2, 0.02, 0.002), eigvec=((1.0, 0.0, 0.0),) * 3,
                   wnids=tuple(wnids()), steps_per_epoch=STEPS_PER_EPOCH, run_dir=config["run_dir"],
                   mlflow_run_id=None, tracking_uri=None)
    model = make_model(cfg, CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for p in model.parameters():  # the momentum buffers one SGD step leaves, without a step's minutes on a CPU
        optimizer.state[p]["momentum_buffer"] = torch.full_like(p, 1e-3)
    state = ckpt.TrainState(epoch=1, step=STEPS_PER_EPOCH, config={})
    t0 = time.perf_counter()
    save(model, optimizer, state, cfg, info, {"val_top1": 0.5}, current(), Tracker(False, None, "scale"))
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    uri, _ = ckpt.latest_in(config["run_dir"])
    with tempfile.TemporaryDirectory(prefix="scale-resume-") as tmp:
        directory = ckpt.fetch_checkpoint(uri, tmp)
        files = {p.name: p.stat().st_size for p in Path(directory).iterdir()}
        model.load_state_dict(ckpt.read_weights(directory))
        optimizer.load_state_dict(ckpt.read_optimizer(directory))
    read = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    Path(config["out"]).write_text(json.dumps({"write_s": written, "read_s": read, "files": files,
                                               "parameters": params, "uri": uri}))


def run_checkpoint(args: argparse.Namespace, work: Path) -> dict:
    """One full-width VGG-E checkpoint to S3 and back, through a 1-worker Ray Train run as the trainer persists it."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline import storage
    from trainer.distributed import torch_config

    out = work / "checkpoint.json"
    storage_uri = f"s3://{BUCKET}/checkpoints"
    fs, _ = storage.resolve(storage_uri)
    trainer = TorchTrainer(
        checkpoint_worker, train_loop_config={"run_dir": f"{storage_uri}/vgg-e", "out": str(out)},
        torch_config=torch_config(use_gpu=False),
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="vgg-e", storage_path=storage_uri.removeprefix("s3://"),
                                       storage_filesystem=fs))
    trainer.fit()
    result = json.loads(out.read_text())
    result["bytes"] = sum(result["files"].values())
    return result


def sweep_setup(manifest_uri: str, images: int | None) -> tuple[Any, list, dict, list[str]]:
    """The sweep's plan over the F = 1.0 val shards for 6 stand-in nets (cards only: their weights are not read)."""
    from evaluation.models import LoadedModel, default_scales, label_models
    from evaluation.posteriors import data_id, shard_limits
    from evaluation.sweep import Plan
    from pipeline.manifest import load_manifest
    from vgg.card import ModelCard

    manifest = load_manifest(manifest_uri)
    models = []
    for i, (arch, smin, smax) in enumerate(SWEEP_NETS):
        card = ModelCard(arch=arch, num_classes=CLASSES, crop=224, smin=smin, smax=smax, mean=(124.0, 117.0, 104.0),
                         classes=tuple(manifest.wnids))
        mid = f"{arch}-{smin}" + (f"-{smax}" if smax != smin else "") + f"-{i:012d}"
        models.append(LoadedModel(f"net{i}", f"net{i}", card, {}, mid, f"{arch}/{card.train_scale}"))
    models = label_models(models)
    split = manifest.split("val")
    plan = Plan(manifest, models, {m.model_id: default_scales(m.card) for m in models}, manifest.shard_uris("val"),
                shard_limits([s.rows for s in split.shards], images), data_id(manifest, "val", images))
    return plan, models, plan.scales, ["dense", "multicrop"]


def run_sweep(args: argparse.Namespace, work: Path) -> dict:
    """The sweep's plan, store and report at 50,000 x 1,000 x 6 nets x 3 Q x (dense, multi-crop)."""
    import pyarrow.parquet as pq

    from evaluation.posteriors import PosteriorStore
    from evaluation.report import build_report
    from evaluation.sweep import pending_units

    manifest_uri = str(args.sweep_data or args.work / "f1" / "shards" / "manifest.json")
    if not Path(manifest_uri).exists():
        raise SystemExit(f"error: no {manifest_uri}: run --fraction 1.0 first (the sweep reads its val shards)")
    out = work / "sweep"
    shutil.rmtree(out, ignore_errors=True)
    stages = {}
    with Stage("sweep_plan", None) as s:
        plan, models, scales, methods = sweep_setup(manifest_uri, args.sweep_images)
        store = PosteriorStore(str(out), plan.data)
        units = pending_units(plan, store, methods)
    s.record.update(items=len(units), images=sum(plan.limits), shards=len(plan.shards))
    stages["sweep_plan"] = s.record
    rng = np.random.default_rng(0)
    with Stage("sweep_store", None) as s:
        for shard in plan.shards:
            table = pq.read_table(plan.shard_uris[shard], columns=["key", "label"]).slice(0, plan.limits[shard])
            keys, labels = table.column("key").to_pylist(), table.column("label").to_numpy()
            for u in (u for u in units if u.shard == shard):
                for view in u.views:
                    probs = rng.random((len(keys), CLASSES), dtype=np.float32)
                    probs[np.arange(len(keys)), labels] += rng.random(len(keys), dtype=np.float32) * 8  # some right
                    probs /= probs.sum(axis=1, keepdims=True)
                    store.write(u.model.model_id, u.q, view, shard, keys, labels, probs)
    files = sorted((out).rglob("*.parquet"))
    s.record.update(items=len(files), bytes=sum(p.stat().st_size for p in files))
    stages["sweep_store"] = s.record
    with Stage("sweep_report", None) as s:
        report = build_report(models, scales, methods, store.loader(plan.shards))
        written = report.write(work / "sweep-report")
    s.record.update(items=len(report.cells), tables=[len(t.rows) for t in report.tables],
                    bytes=sum(p.stat().st_size for p in written))
    stages["sweep_report"] = s.record
    shutil.rmtree(out, ignore_errors=True)
    return stages


def mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on loopback over a new sqlite store (one worker, no job execution)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_port(port, proc, "the MLflow server", timeout=180)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the MLflow server did not answer") from None
            time.sleep(0.5)


TRAIN_KEYS = ("train_loss", "train_top1_err", "train_top5_err", "lr", "images_per_s", "data_wait_fraction",
              "epoch_progress")
EPOCH_KEYS = ("epoch", "step", "next_lr", "val_top1", "val_top5", "val_top1_err", "val_top5_err", "val_loss",
              "val_images", "replica_divergence")
SYSTEM_KEYS = ("cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage",
               "disk_usage_percentage", "disk_usage_megabytes", "disk_available_megabytes", "network_receive_megabytes",
               "network_transmit_megabytes", "gpu_0_memory_usage_percentage", "gpu_0_memory_usage_megabytes",
               "gpu_0_utilization_percentage", "gpu_0_power_usage_watts", "gpu_0_power_usage_percentage")


def get_json(url: str) -> dict:
    """GET a JSON document."""
    with urllib.request.urlopen(url, timeout=600) as r:
        return json.loads(r.read())


def run_mlflow(args: argparse.Namespace, work: Path) -> dict:
    """A 74-epoch run's metrics logged at the trainer's rate through its Tracker, then read back as the UI does."""
    from mlflow.entities import Metric

    from trainer.tracking import Tracker

    root = work / "mlflow"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    proc, uri = mlflow_server(root)
    stages = {}
    try:
        log_every = max(1, STEPS_PER_EPOCH // 10)  # trainer/loop.py's rate: ten train points per epoch
        system_points = int(args.run_hours * 3600 / SYSTEM_INTERVAL_S)
        with Stage("mlflow_log", proc.pid, "mlflow_server") as s:
            tracker = Tracker(True, uri, "scale")
            tracker.start(None, "vgg-e-74-epochs", {"model.arch": "E"}, {})
            rows = 0
            for epoch in range(EPOCHS):
                for step_in in range(1, STEPS_PER_EPOCH + 1):
                    if step_in % log_every == 0 or step_in == STEPS_PER_EPOCH:
                        step = epoch * STEPS_PER_EPOCH + step_in
                        tracker.metrics({k: 1.0 / step for k in TRAIN_KEYS}, step=step)
                        rows += len(TRAIN_KEYS)
                tracker.metrics({k: float(epoch) for k in EPOCH_KEYS}, step=(epoch + 1) * STEPS_PER_EPOCH)
                rows += len(EPOCH_KEYS)
            # System metrics, as MLflow's monitor logs them (one batch per interval), written here in batches of
            # 1,000 so that hours of them take seconds.
            t_start = int(time.time() * 1000)
            batch: list = []
            for i in range(system_points):
                batch += [Metric(f"system/{k}", 50.0, t_start + i * 10_000, i) for k in SYSTEM_KEYS]
                if len(batch) >= 1000 - len(SYSTEM_KEYS) or i == system_points - 1:
                    tracker._client.log_batch(tracker.run_id, metrics=batch)
                    rows, batch = rows + len(batch), []
            tracker.end("FINISHED")
        s.record.update(items=rows, train_log_points=EPOCHS * 10, system_points=system_points,
                        bytes=(root / "mlflow.db").stat().st_size)
        stages["mlflow_log"] = s.record
        run_id = tracker.run_id
        with Stage("mlflow_load", proc.pid, "mlflow_server") as s:
            t0 = time.perf_counter()
            run = get_json(f"{uri}/ajax-api/2.0/mlflow/runs/get?run_id={run_id}")
            keys = [m["key"] for m in run["run"]["data"].get("metrics", [])]
            page_s = time.perf_counter() - t0
            sampled = 0
            for k in keys:  # what each chart of the run page asks for: a sampled history of its key
                r = get_json(f"{uri}/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?run_ids={run_id}"
                             f"&metric_key={urllib.request.quote(k)}&max_results=320")
                sampled += len(r.get("metrics", []))
            charts_s = time.perf_counter() - t0
            full = 0
            for k in keys:  # the whole history of every key (a download, or a chart without sampling)
                token = ""
                while True:
                    r = get_json(f"{uri}/ajax-api/2.0/mlflow/metrics/get-history?run_id={run_id}"
                                 f"&metric_key={urllib.request.quote(k)}&max_results=25000" + token)
                    full += len(r.get("metrics", []))
                    if not r.get("next_page_token"):
                        break
                    token = f"&page_token={r['next_page_token']}"
            full_s = time.perf_counter() - t0 - charts_s
        s.record.update(items=full, metric_keys=len(keys), run_get_s=round(page_s, 3),
                        run_page_charts_s=round(charts_s, 2), sampled_points=sampled,
                        full_history_s=round(full_s, 2))
        stages["mlflow_load"] = s.record
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    return stages


def run_fixed(args: argparse.Namespace) -> dict:
    """The stages whose size does not follow the images: checkpoint, the sweep's store and report, MLflow."""
    work = args.work / "fixed"
    work.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}
    wanted = set(args.only or ("checkpoint", "sweep", "mlflow"))
    if "mlflow" in wanted:
        stages.update(run_mlflow(args, work))
    if "sweep" in wanted:
        stages.update(run_sweep(args, work))
    if "checkpoint" in wanted:
        with s3_server() as moto:
            start_ray(args.ray_cpus)
            with Stage("checkpoint", moto.pid) as s:
                result = run_checkpoint(args, work)
            s.record.update(items=result["parameters"], **result)
            stages["checkpoint"] = s.record
            import ray

            ray.shutdown()
    return {"stages": stages}


# ---- summary -----------------------------------------------------------------------------------------------------

COSTS = ("wall_s", "driver_cpu_s", "ray_cpu_s", "driver_peak_mb", "ray_peak_mb")
EPOCH_COSTS = ("epoch0_wall_s", "epoch1_wall_s", "first_batch_s", "epoch1_first_batch_s")


def fit_exponent(sizes: list[float], costs: list[float]) -> float | None:
    """k of cost = a * size^k, least squares on log-log; None with fewer than two positive points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(sizes, costs) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    xs, ys = zip(*pts)
    return round(float(np.polyfit(xs, ys, 1)[0]), 2)


def summarise(results_dir: Path, plot_path: Path | None) -> dict:
    """Exponents per stage and cost from the scale_f*.json results; the log-log plot."""
    runs = {}
    for f in FRACTIONS:
        path = results_dir / f"scale_f{f:g}.json"
        if path.exists():
            runs[f] = json.loads(path.read_text())
    stages = sorted({s for r in runs.values() for s in r.get("stages", {})})
    fits: dict[str, dict] = {}
    for stage in stages:
        points = [(runs[f]["stages"][stage]["items"], runs[f]["stages"][stage]) for f in sorted(runs)
                  if stage in runs[f].get("stages", {})]
        fits[stage] = {"items": [p[0] for p in points]}
        if stage == "epochs":  # per epoch too: the first (Ray Data's start included) and the later ones
            for p in points:
                first, *later = p[1]["epochs"]
                p[1]["epoch0_wall_s"], p[1]["first_batch_s"] = first["wall_s"], first["first_batch_s"]
                p[1]["epoch1_wall_s"] = later[0]["wall_s"] if later else None
                p[1]["epoch1_first_batch_s"] = later[0]["first_batch_s"] if later else None
        for cost in COSTS + (EPOCH_COSTS if stage == "epochs" else ()):
            fits[stage][cost] = [p[1].get(cost) for p in points]
            fits[stage][f"{cost}_exponent"] = fit_exponent([p[0] for p in points],
                                                           [p[1].get(cost) or 0 for p in points])
            # The slope over the last decade alone: a fixed start-up cost flattens the fit over all three points.
            fits[stage][f"{cost}_last_slope"] = fit_exponent([p[0] for p in points[-2:]],
                                                             [p[1].get(cost) or 0 for p in points[-2:]])
    print("| stage | items | " + " | ".join(COSTS) + " |\n|---|---|" + "---|" * len(COSTS))
    for stage, fit in fits.items():
        cells = [", ".join(f"{v:g}" for v in fit[c] if v is not None)
                 + f" (k = {fit[c + '_exponent']}; {fit[c + '_last_slope']})" for c in COSTS]
        print(f"| {stage} | {', '.join(f'{n:,}' for n in fit['items'])} | " + " | ".join(cells) + " |")
    if "epochs" in fits:
        print("epochs, per epoch: " + "; ".join(f"{c} {fits['epochs'][c]} (k = {fits['epochs'][c + '_exponent']}; "
                                                f"{fits['epochs'][c + '_last_slope']})" for c in EPOCH_COSTS))
    if plot_path is not None and fits:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
        for ax, (cost, label) in zip(axes, (("wall_s", "wall time (s)"), ("cpu", "CPU seconds (driver + Ray)"),
                                            ("driver_peak_mb", "driver peak memory (MiB)"))):
            for stage, fit in fits.items():
                ys = ([(a or 0) + (b or 0) for a, b in zip(fit["driver_cpu_s"], fit["ray_cpu_s"])] if cost == "cpu"
                      else fit[cost])
                k = fit_exponent(fit["items"], ys)
                ax.loglog(fit["items"], ys, "o-", label=f"{stage} (k={k})")
            ax.set_xlabel("items (files, images or rows)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        fig.suptitle("cost against size, F = " + ", ".join(f"{f:g}" for f in sorted(runs)))
        fig.savefig(plot_path, dpi=100)
        plt.close(fig)
        print(f"wrote {plot_path.relative_to(ROOT) if plot_path.is_relative_to(ROOT) else plot_path}")
    return fits


# ---- driver ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen stages, print them, write the JSON; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--fraction", type=float, help="run the stages that grow with the images at this fraction "
                      "of ImageNet's counts (0 < F <= 1)")
    what.add_argument("--fixed", action="store_true", help="run the fixed-size stages (checkpoint, sweep, mlflow)")
    what.add_argument("--summary", action="store_true", help="exponents and the plot from the results written")
    parser.add_argument("--only", nargs="+", choices=("checkpoint", "sweep", "mlflow"), help="with --fixed: these")
    parser.add_argument("--stages-only", choices=("tree",), help="with --fraction: build the tree and stop")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "verydeep" / "scale",
                        help="where the trees and scratch files go (reused between runs)")
    parser.add_argument("--epochs", type=int, default=2, help="timed Ray Data epochs")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    parser.add_argument("--worker-cpus", type=float, default=0.5, help="logical CPUs per Train worker (the rest "
                        "stays with Ray Data's read tasks)")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2, help="logical CPUs of the local Ray")
    parser.add_argument("--sweep-images", type=int, default=None, help="the sweep on this many val images "
                        "(default: all 50,000)")
    parser.add_argument("--sweep-data", type=Path, default=None, help="the manifest whose val shards the sweep "
                        "covers (default: the F = 1.0 run's local shards)")
    parser.add_argument("--run-hours", type=float, default=8.0, help="MLflow: the 74-epoch run's length, for its "
                        "system metrics (8 h: one H100 for VGG-E, README's estimate)")
    parser.add_argument("--json", type=Path, default=None, help="where to write results (default under "
                        "benchmarks/results/)")
    parser.add_argument("--no-json", action="store_true", help="write no JSON")
    parser.add_argument("--plot", type=Path, default=DOCS / "scale.png", help="with --summary: the plot's path")
    args = parser.parse_args(argv)
    if args.summary:
        return summarise(RESULTS, args.plot)
    if args.fraction is not None and not 0 < args.fraction <= 1:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.epochs < 1 or args.workers < 1:
        parser.error("--epochs and --workers must be at least 1")
    args.work = args.work.expanduser().resolve()
    if args.work.is_relative_to(ROOT):
        parser.error(f"--work {args.work} is inside the repository: choose a directory outside it")

    t0 = time.perf_counter()
    body = run_fraction(args) if args.fraction is not None else run_fixed(args)
    result = {
        "command": " ".join(["python", "benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "fraction": args.fraction, "seconds": round(time.perf_counter() - t0, 1), **body,
        "targets": {"exponent": MAX_EXPONENT, "driver_peak_mb": MAX_DRIVER_MB, "first_batch_s": MAX_FIRST_BATCH_S,
                    "report_peak_mb": MAX_REPORT_MB},
    }
    name = f"scale_f{args.fraction:g}.json" if args.fraction is not None else "scale_fixed.json"
    path = args.json or RESULTS / name
    if args.only and path.exists():  # some of the fixed stages: the others' results are kept
        earlier = json.loads(path.read_text())
        result["stages"] = {**earlier.get("stages", {}), **result["stages"]}
        result["command"] = f"{earlier['command']}; {result['command']}"
    if not args.no_json and args.stages_only is None:
        write_results(path, result)
    return result


if __name__ == "__main__":
    main()
