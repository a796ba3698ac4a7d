"""End to end: Ray Data from an S3 server -> decoded, augmented batches at a Ray Train worker, vs a torch DataLoader.

    python benchmarks/pipeline_e2e.py            # ~6 minutes on 2 cores; writes benchmarks/results/pipeline_e2e.json
    python benchmarks/pipeline_e2e.py --quick    # smoke run (~1.5 minutes); writes JSON only with --json PATH

Both sides deliver the same thing from the same JPEGs on the same machine: (32, 3, 224, 224) float32 batches of
training crops (shorter side to S ~ U[256, 512], random 224 crop, flip, normalise) plus int64 labels, one pass over
the training set per epoch.

- ours (the real training input path): the images are ingested with ``pipeline.prepare`` into Parquet shards in a
  bucket of a moto S3 server on 127.0.0.1 (started here, in this process); ``ray.train.torch.TorchTrainer`` with one
  worker reads them with ``pipeline.dataset.read_shards`` + ``SplitDataConfig`` (per-epoch shard shuffle, local
  shuffle buffer) and ``iter_epoch`` + ``pipeline.loader.TrainCollate`` with the default decoder
  (``make_train_decoder("auto")``: the CPU backend on a CPU device), which also applies the PCA colour shift.
- torchvision: ``DataLoader(ImageFolder(root, transform=...), num_workers=2, batch_size=32, shuffle=True,
  persistent_workers=True)`` over the same JPEGs on local disk, with torchvision's recipe on PIL images
  (RandomResize(256, 513) -> RandomCrop(224) -> RandomHorizontalFlip -> PILToTensor -> ToDtype(float32) ->
  Normalize).

The same cores for both: the whole machine (every process of either side, the S3 server and Ray's daemons included,
runs on it), one side at a time. Each run does a warm-up epoch (worker start-up, first reads, page cache) and then
times whole epochs at the consumer: images delivered / wall seconds from asking for the epoch's first batch to
receiving its last. Runs alternate between the two sides; the ratio is taken per run, side by side.

Ray side settings (the tunables, stated in the JSON): Ray started with ``--ray-cpus`` logical CPUs (default 2: the
cores), the Train worker holds ``--worker-cpus`` of them (0.5: the rest stays with Ray Data's read tasks; Ray Data
needs a free CPU or it stalls on 2 cores), ``--prefetch`` batches decoded ahead (= Ray Data's collate threads, one
core each: 2), torch intra-op threads 1 per decoding thread.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))
import imagenet_like as I  # noqa: E402  (benchmarks/, on sys.path as the script's folder)
from machine import cpu_model, use_s3, write_results  # noqa: E402  (benchmarks/, on sys.path as the script's folder)

warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")

CROP, SMIN, SMAX, BATCH = 224, 256, 512, 32
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_e2e.json"
BUCKET = "bench"


# ---- data --------------------------------------------------------------------------------------------------------


def _write_image(job: tuple[str, int, int, int]) -> int:
    path, seed, h, w = job
    rng = np.random.default_rng(seed)
    data = I.jpeg(rng, h, w)
    Path(path).write_bytes(data)
    return len(data)


def make_image_folder(root: Path, images: int, classes: int) -> dict:
    """An ImageFolder tree root/train/<wnid>/*.JPEG of natural-looking ImageNet-like JPEGs (reused if complete)."""
    marker = root / f"complete-{images}-{classes}.json"
    if marker.exists():
        return json.loads(marker.read_text())
    jobs = []
    for i in range(images):
        wnid = f"n{10000000 + i % classes:08d}"
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        jobs.append((str(root / "train" / wnid / f"{wnid}_{i}.JPEG"), i, *I.SHAPES[i % len(I.SHAPES)]))
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        sizes = pool.map(_write_image, jobs, chunksize=16)
    info = {"images": images, "classes": classes, "mean_jpeg_kb": round(sum(sizes) / len(sizes) / 1024, 1),
            "bytes_per_pixel": round(sum(sizes) / sum(h * w for _, _, h, w in jobs), 3),
            "generated_s": round(time.perf_counter() - t0, 1)}
    marker.write_text(json.dumps(info))
    return info


def start_s3() -> tuple[object, str]:
    """A moto S3 server on 127.0.0.1 (this process), with dummy credentials in the environment for Ray's workers."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    use_s3(endpoint, BUCKET)
    return server, endpoint


# ---- ours: Ray Data -> Ray Train worker --------------------------------------------------------------------------


def ray_worker_loop(config: dict) -> None:
    """Inside the Train worker: epochs of decoded batches through iter_epoch + TrainCollate; report epoch rates."""
    import ray.train

    from pipeline.dataset import TRAIN, iter_epoch
    from pipeline.decode import make_train_decoder
    from pipeline.loader import TrainAugment, TrainCollate

    class TimedCollate(TrainCollate):
        """TrainCollate that adds up the CPU time its calls take (where the worker's time goes)."""

        cpu_s = 0.0

        def __call__(self, batch):
            t = time.thread_time()
            try:
                return super().__call__(batch)
            finally:
                TimedCollate.cpu_s += time.thread_time() - t  # a float add under the GIL: exact enough here

    torch.set_num_threads(1)  # one core per decoding thread: Ray Data runs `prefetch` collate threads
    decoder = make_train_decoder("auto", crop=CROP, mean=I.MEAN, eigval=I.EIGVAL, eigvec=I.EIGVEC, std=I.STD,
                                 device="cpu")
    augment = TrainAugment(SMIN, SMAX, CROP)
    shard = ray.train.get_dataset_shard(TRAIN)
    rates, counts, cpu = [], [], []
    for epoch in range(config["epochs"]):
        collate = TimedCollate(decoder, augment, seed=0, epoch=epoch)
        TimedCollate.cpu_s, c0 = 0.0, time.process_time()
        n, t0 = 0, time.perf_counter()
        for images, labels, _ in iter_epoch(shard, batch_size=BATCH, epoch=epoch, seed=0, rank=0, collate_fn=collate,
                                         shuffle_buffer=config["shuffle_buffer"],
                                         prefetch_batches=config["prefetch"]):
            if n == 0:
                assert images.shape[1:] == (3, CROP, CROP) and images.dtype == torch.float32, images.shape
                assert labels.dtype == torch.int64
                t1, n1 = time.perf_counter(), len(labels)
            n += len(labels)
        t2 = time.perf_counter()
        rates.append({"epoch": n / (t2 - t0), "steady": (n - n1) / (t2 - t1), "first_batch_s": t1 - t0})
        counts.append(n)
        cpu.append({"wall_s": round(t2 - t0, 2), "worker_cpu_s": round(time.process_time() - c0, 2),
                    "collate_cpu_s": round(TimedCollate.cpu_s, 2)})
    # Ray Train V2 keeps reported metrics with checkpoints only: the (single-node) result goes through a file.
    result = {"rates": rates, "counts": counts, "cpu": cpu, "backend": decoder.backend}
    Path(config["out"]).write_text(json.dumps(result))


def run_ray(shards: list[str], args: argparse.Namespace, storage_path: str, dataset: object = None) -> dict:
    """One TorchTrainer run (1 worker): a warm-up epoch then ``args.epochs`` timed ones; images/s per epoch.
    ``dataset``: the training dataset to read instead of ``read_shards(shards)`` (benchmarks/verify_cost.py)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline import storage
    from pipeline.dataset import TRAIN, SplitDataConfig, read_shards
    from trainer.distributed import torch_config

    fs, _ = storage.resolve(shards[0])
    out = Path(storage_path) / f"rates-{time.time_ns()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        ray_worker_loop,
        train_loop_config={"epochs": 1 + args.epochs, "prefetch": args.prefetch,
                           "shuffle_buffer": args.shuffle_buffer,
                           "out": str(out)},
        torch_config=torch_config(use_gpu=False),
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": args.worker_cpus}),
        run_config=ray.train.RunConfig(name=f"e2e-{time.time_ns()}", storage_path=storage_path),
        datasets={TRAIN: dataset if dataset is not None else read_shards(shards, filesystem=fs, shuffle_seed=0)},
        dataset_config=SplitDataConfig(),
    )
    c0 = time.process_time()  # this process also serves S3 (moto)
    trainer.fit()
    metrics = json.loads(out.read_text())
    return {**summarise(metrics["rates"], metrics["counts"]), "decoder_backend": metrics["backend"],
            "timed_epochs_cpu": metrics["cpu"][1:], "driver_cpu_s_whole_run": round(time.process_time() - c0, 1)}


def summarise(rates: list[dict], counts: list[int]) -> dict:
    """Per timed epoch (the first, warm-up, epoch left out): whole-epoch and steady-state rates, first-batch wait."""
    timed = rates[1:]
    return {"epoch_img_per_s": [round(r["epoch"], 1) for r in timed],
            "steady_img_per_s": [round(r["steady"], 1) for r in timed],
            "first_batch_s": [round(r["first_batch_s"], 2) for r in timed],
            "images": counts[1], "warmup_epoch_img_per_s": round(rates[0]["epoch"], 1)}


# ---- baseline: DataLoader over ImageFolder -----------------------------------------------------------------------


def run_dataloader(root: Path, args: argparse.Namespace) -> dict:
    """DataLoader(ImageFolder) with 2 worker processes: a warm-up epoch then ``args.epochs`` timed ones."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    torch.set_num_threads(1)
    dataset = ImageFolder(str(root / "train"), transform=I.torchvision_recipe(SMIN, SMAX, CROP))
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=args.loader_workers,
                        persistent_workers=True)
    rates, counts = [], []
    for epoch in range(1 + args.epochs):
        n, t0 = 0, time.perf_counter()
        for images, labels in loader:
            if n == 0:
                assert images.shape[1:] == (3, CROP, CROP) and images.dtype == torch.float32
                t1, n1 = time.perf_counter(), len(labels)
            n += len(labels)
        t2 = time.perf_counter()
        rates.append({"epoch": n / (t2 - t0), "steady": (n - n1) / (t2 - t1), "first_batch_s": t1 - t0})
        counts.append(n)
    del loader  # stops the persistent workers before the other side runs
    return summarise(rates, counts)


# ---- driver ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, write the JSON; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="192 images, 1 run of 1 timed epoch: a smoke run")
    parser.add_argument("--images", type=int, default=2048, help="training images (ImageNet-like JPEGs)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after one warm-up epoch)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--prefetch", type=int, default=2, help="Ray: batches decoded ahead = collate threads")
    parser.add_argument("--shuffle-buffer", type=int, default=256, help="Ray: local shuffle buffer (rows)")
    parser.add_argument("--worker-cpus", type=float, default=0.5, help="Ray: logical CPUs the Train worker holds")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2, help="Ray: logical CPUs of the node")
    parser.add_argument("--loader-workers", type=int, default=os.cpu_count() or 2, help="DataLoader num_workers")
    parser.add_argument("--shard-mb", type=float, default=16.0, help="ingestion: target shard size (MiB)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the JPEGs go (reused when complete)")
    parser.add_argument("--json", type=Path, default=None, help=f"where to write results (default {RESULTS.name})")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.runs, args.shard_mb = 192, 1, 1, 4.0
    out_path = args.json or (None if args.quick else RESULTS)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pipeline-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "imagefolder"

    t0 = time.perf_counter()
    data = make_image_folder(root, args.images, args.classes)
    print(f"{data['images']} JPEGs in {data['classes']} classes ({data['mean_jpeg_kb']} KB, "
          f"{data['bytes_per_pixel']} B/px) at {root} ({time.perf_counter() - t0:.0f} s)", flush=True)
    server, endpoint = start_s3()
    import ray

    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        from pipeline.prepare import PrepareConfig, prepare

        t0 = time.perf_counter()
        manifest = prepare(PrepareConfig(src=str(root), dst=f"s3://{BUCKET}/shards", target_shard_mb=args.shard_mb,
                                         row_group_mb=min(32.0, args.shard_mb / 4), stats_images=200))
        shards = manifest.shard_uris("train")
        print(f"ingested into s3://{BUCKET}/shards on {endpoint}: {len(shards)} shards "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        runs = []
        for r in range(args.runs):
            order = ["dataloader", "ray"] if r % 2 == 0 else ["ray", "dataloader"]
            run = {}
            for side in order:
                t0 = time.perf_counter()
                run[side] = (run_dataloader(root, args) if side == "dataloader"
                             else run_ray(shards, args, str(workdir / "ray-results")))
                print(f"run {r + 1} {side:10s}: whole epochs {run[side]['epoch_img_per_s']} img/s, steady "
                      f"{run[side]['steady_img_per_s']} img/s, first batch after {run[side]['first_batch_s']} s "
                      f"({time.perf_counter() - t0:.0f} s with start-up and warm-up)", flush=True)
            for metric in ("epoch", "steady"):
                ours, base = (statistics.median(run[k][f"{metric}_img_per_s"]) for k in ("ray", "dataloader"))
                run[f"ratio_{metric}"] = round(ours / base, 2)
            runs.append(run)
    finally:
        ray.shutdown()
        server.stop()

    result = {
        "command": " ".join(["python", "benchmarks/pipeline_e2e.py", *sys.argv[1:]]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "setup": {
            "images": data["images"], "classes": data["classes"], "mean_jpeg_kb": data["mean_jpeg_kb"],
            "bytes_per_pixel": data["bytes_per_pixel"], "jpeg_quality": I.QUALITY, "shapes": I.SHAPES,
            "batch": BATCH, "crop": CROP, "S": [SMIN, SMAX], "timed_epochs_per_run": args.epochs, "runs": args.runs,
            "statistic": "images per wall second at the consumer, after a warm-up epoch: over whole epochs (from "
                         "asking for the first batch), and steady state (from the first batch to the last)",
            "ray": {"logical_cpus": args.ray_cpus, "train_workers": 1, "worker_cpus": args.worker_cpus,
                    "prefetch_batches": args.prefetch, "collate_threads": min(4, args.prefetch),
                    "torch_threads": 1, "shuffle_buffer": args.shuffle_buffer, "shards": len(shards),
                    "shard_mb": args.shard_mb, "s3": "moto server on 127.0.0.1 (in the benchmark process)"},
            "dataloader": {"num_workers": args.loader_workers, "persistent_workers": True, "shuffle": True,
                           "source": "ImageFolder on local disk"},
        },
        "runs": runs,
        "img_per_s": {
            metric: {"ray_data_train_worker": median_of(runs, "ray", f"{metric}_img_per_s"),
                     "dataloader_imagefolder": median_of(runs, "dataloader", f"{metric}_img_per_s")}
            for metric in ("epoch", "steady")},
        "ratio": {metric: {"median": statistics.median(r[f"ratio_{metric}"] for r in runs),
                           "range": [min(r[f"ratio_{metric}"] for r in runs), max(r[f"ratio_{metric}"] for r in runs)]}
                  for metric in ("epoch", "steady")},
    }
    result["target"] = {"ratio": 1.0, "met_whole_epochs": result["ratio"]["epoch"]["range"][0] >= 1.0,
                        "met_steady_state": result["ratio"]["steady"]["range"][0] >= 1.0}
    print_table(result)
    if out_path is not None:
        write_results(out_path, result)
    return result


def median_of(runs: list[dict], side: str, key: str) -> float:
    return statistics.median(x for r in runs for x in r[side][key])


def print_table(result: dict) -> None:
    s = result["setup"]
    print(f"\n{s['images']} ImageNet-like JPEGs ({s['mean_jpeg_kb']} KB), batch {s['batch']} of "
          f"(3, {s['crop']}, {s['crop']}) float32, {result['machine']['cores']} cores; images/s per timed epoch "
          "(whole epoch | steady state after its first batch)")
    print(f"  {'run':>3s} {'ray data -> train worker':>30s} {'dataloader(imagefolder)':>30s} {'ratio':>13s}")
    for i, r in enumerate(result["runs"], 1):
        cells = [", ".join(f"{x:.0f}" for x in r[side]["epoch_img_per_s"]) + " | "
                 + ", ".join(f"{x:.0f}" for x in r[side]["steady_img_per_s"]) for side in ("ray", "dataloader")]
        print(f"  {i:3d} {cells[0]:>30s} {cells[1]:>30s} {r['ratio_epoch']:5.2f} | {r['ratio_steady']:.2f}")
    for metric, label in (("epoch", "whole epochs"), ("steady", "steady state")):
        ratio = result["ratio"][metric]
        print(f"target ours >= 1.0x the DataLoader, {label}: "
              f"{'met' if ratio['range'][0] >= 1.0 else 'NOT met'} "
              f"(median {ratio['median']:.2f}x, range {ratio['range'][0]:.2f}-{ratio['range'][1]:.2f}x)")


if __name__ == "__main__":
    main()
