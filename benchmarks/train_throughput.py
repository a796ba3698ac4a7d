"""Training throughput: images/s, data-wait fraction and MFU of the training step, with the data paths side by side.

    python benchmarks/train_throughput.py           # ~1 minute on 2 CPU cores (not yet timed on a GPU)
    python benchmarks/train_throughput.py --quick   # smoke run of both parts; writes JSON only with --json PATH

Writes benchmarks/results/train_throughput_{cpu,cuda}.json and prints two tables.

Part 1, the smoke job as users run it: ``python -m trainer.run --config smoke`` in a subprocess (Ray Train, one
worker, the digits shards through Ray Data and the CPU decoder, the paper's schedule, checkpoints, MLflow into a
throw-away SQLite store), then its own logged ``perf/images_per_s`` and ``perf/data_wait_pct`` (a window of steps each,
read back from MLflow) and its wall time. Beside it: the same net's step on one synthetic batch held in memory,
the ceiling for any data path.

Part 2, the training step at the size the device is for, with ``trainer.loop.train_step`` (the trainer's own step:
bf16 autocast and channels-last on CUDA, fp32 on a CPU; SGD with the paper's momentum and weight decay):

- on CUDA: VGG-16 (net D) at 224, batch 256 per GPU, 1000 classes;
- on a CPU: a stand-in that finishes in a minute (net A at width 1/8, crop 64, batch 16): it runs the same code, its
  figures are not the GPU's.

Three feeds, on the same model, one after the other:

- ``synthetic``: one batch resident on the device, no data cost: the step's own rate and its MFU;
- ``ours``: ``pipeline.decode``'s default decoder on this device (DALI: nvJPEG decode + the paper's augmentation on
  the GPU; on a CPU the CPU backend) over ImageNet-like JPEGs (~500x375, quality 90) held in host memory; the next
  batch is decoded by a background thread while the step runs, as Ray Data's prefetch does in the trainer;
- ``torchvision``: the plain loop: ``DataLoader(num_workers=W, pin_memory=True)`` with torchvision's reference
  recipe on PIL images (RandomResize(S) -> RandomCrop -> RandomHorizontalFlip -> PILToTensor -> float ->
  Normalize), then ``.to(device)``.

Data wait = seconds the step loop spends waiting for its next batch / total seconds. MFU = 6 x the model's
multiply-adds per image (forward 2 flops per MAC, backward twice the forward) x images/s / the device's peak dense
bf16 flops (``--peak-tflops``; known GPUs are looked up by name). The read from object storage is not in part 2:
benchmarks/pipeline_e2e.py measures Ray Data from S3 to a Train worker.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))
import imagenet_like as I  # noqa: E402  (benchmarks/, on sys.path as the script's folder)
from machine import cpu_model, peak_bf16_tflops, write_results  # noqa: E402  (benchmarks/, on sys.path as the script's folder)

from pipeline.decode import make_train_decoder  # noqa: E402
from trainer.config import compose  # noqa: E402
from trainer.distributed import Worker  # noqa: E402
from trainer.loop import train_step  # noqa: E402
from vgg import augment as A  # noqa: E402
from vgg.model import build, multiply_adds  # noqa: E402

warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")

# ---- part 1: the smoke job --------------------------------------------------------------------------------------


def smoke_job(workdir: Path, epochs: int) -> dict:
    """Run the smoke job in a subprocess; its logged throughput figures, read back from its MLflow store."""
    import mlflow

    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "trainer.run", "--config", "smoke", "--epochs", str(epochs), "--name", "bench",
           "--storage", str(workdir / "runs"), "--tracking-uri", tracking]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: the smoke job failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    found = re.search(r"\(run ([0-9a-f]+)\)", proc.stdout)
    if found is None:
        raise SystemExit("error: the smoke job printed no MLflow run id")
    client = mlflow.MlflowClient(tracking_uri=tracking)
    run = client.get_run(found.group(1))
    rate = [m.value for m in client.get_metric_history(run.info.run_id, "perf/images_per_s")]
    wait = [m.value / 100 for m in client.get_metric_history(run.info.run_id, "perf/data_wait_pct")]
    p = run.data.params
    # The first window of the first epoch holds start-up (first reads, first compiled kernels): reported apart.
    return {"command": "python -m trainer.run --config smoke --epochs %d" % epochs, "wall_s": round(wall, 1),
            "images_per_s_median": round(statistics.median(rate[1:] or rate), 1),
            "data_wait_fraction_median": round(statistics.median(wait[1:] or wait), 3),
            "first_window": {"images_per_s": round(rate[0], 1), "data_wait_fraction": round(wait[0], 3)},
            "windows": len(rate),
            "net": {k: p.get(k) for k in ("model.arch", "model.width", "model.fc_width", "model.crop",
                                          "optim.batch_size")}}


# ---- part 2: the step with three feeds ----------------------------------------------------------------------------


def settings(cuda: bool, quick: bool) -> dict:
    if cuda:
        return {"arch": "D", "width": 1.0, "fc_width": 4096, "crop": 224, "batch": 256, "classes": 1000,
                "warmup": 3 if quick else 10, "steps": 5 if quick else 40, "images": 512 if quick else 2048}
    return {"arch": "A", "width": 0.125, "fc_width": 512, "crop": 64, "batch": 16, "classes": 100,
            "warmup": 1 if quick else 3, "steps": 3 if quick else 15, "images": 64 if quick else 256}


def jpeg_set(count: int, seed: int = 0) -> list[tuple[bytes, int, int]]:
    """ImageNet-like JPEGs, held in host memory: (bytes, height, width)."""
    rng = np.random.default_rng(seed)
    shapes = [I.SHAPES[i % len(I.SHAPES)] for i in range(count)]
    return [(I.jpeg(rng, h, w), h, w) for h, w in shapes]


def scales(crop: int) -> tuple[int, int]:
    """The paper's S range [256, 512] at this crop."""
    return round(crop * 256 / 224), round(crop * 512 / 224)


def synthetic_feed(s: dict, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s["batch"], 3, s["crop"], s["crop"], generator=g).to(device)
    y = torch.randint(0, s["classes"], (s["batch"],), generator=g).to(device)
    while True:
        yield x, y


def ours_feed(s: dict, decoder: Callable, images: list) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``decoder`` over the JPEGs; a background thread decodes the next batch (as Ray Data's prefetch does)."""
    smin, smax = scales(s["crop"])
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        rng, i = np.random.default_rng(1), 0
        while not stop.is_set():
            picked = [images[(i + j) % len(images)] for j in range(s["batch"])]
            i += s["batch"]
            params = [A.sample_params(rng, h, w, smin, smax, s["crop"]) for _, h, w in picked]
            batch = decoder([b for b, _, _ in picked], params)
            labels = torch.as_tensor(rng.integers(0, s["classes"], s["batch"]), device=batch.device)
            ready.put((batch, labels))

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            yield ready.get()
    finally:
        stop.set()


class JpegFolder(torch.utils.data.Dataset):
    """An ImageFolder over JPEG bytes in memory: PIL decode + a torchvision transform."""

    def __init__(self, images: list, transform: Callable, classes: int) -> None:
        self.images, self.transform, self.classes = images, transform, classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import io

        from PIL import Image

        return self.transform(Image.open(io.BytesIO(self.images[i][0])).convert("RGB")), i % self.classes


def torchvision_feed(s: dict, device: torch.device, images: list,
                     workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    # Mean removed, no std division: what ``ours`` does (the paper's preprocessing).
    transform = I.torchvision_recipe(*scales(s["crop"]), s["crop"], std=(1.0, 1.0, 1.0))
    loader = torch.utils.data.DataLoader(JpegFolder(images, transform, s["classes"]), batch_size=s["batch"],
                                         shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=True, drop_last=True)
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def run_feed(model: torch.nn.Module, feed: Iterator, s: dict, worker: Worker) -> dict:
    """Warm-up steps, then timed steps: img/s and the fraction of the time spent waiting for data."""
    cfg = compose({}, {"smoke": True, "batch_size": s["batch"]})  # train_step reads its batch split only
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    sync = torch.cuda.synchronize if worker.cuda else (lambda: None)
    for _ in range(s["warmup"]):
        train_step(model, optimizer, *next(feed), cfg, worker)
    sync()
    wait = 0.0
    t0 = t_last = time.perf_counter()
    for _ in range(s["steps"]):
        images, labels = next(feed)
        t_data = time.perf_counter()
        wait += t_data - t_last
        train_step(model, optimizer, images, labels, cfg, worker)  # ends in loss.item(): the step has finished
        t_last = time.perf_counter()
    total = t_last - t0
    return {"images_per_s": round(s["steps"] * s["batch"] / total, 1), "step_ms": round(1e3 * total / s["steps"], 1),
            "data_wait_fraction": round(wait / total, 4)}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    return peak_bf16_tflops(torch.cuda.get_device_name(device))


def step_part(s: dict, device: torch.device, workers: int, given_peak: float | None) -> dict:
    worker = Worker(0, 1, device)
    torch.manual_seed(0)
    model = build(s["arch"], num_classes=s["classes"], width=s["width"], fc_width=s["fc_width"], crop=s["crop"])
    flops_per_image = 6 * multiply_adds(model)
    model = model.to(device)
    if worker.cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    images = jpeg_set(s["images"])
    peak = peak_tflops(device, given_peak)
    # pipeline.decode's default for this device: DALI on a GPU, the CPU backend on a CPU.
    decoder = make_train_decoder(crop=s["crop"], mean=I.MEAN, eigval=I.EIGVAL, eigvec=I.EIGVEC, device=device,
                                 batch_size=s["batch"])
    feeds = {"synthetic": lambda: synthetic_feed(s, device),
             "ours": lambda: ours_feed(s, decoder, images),
             "torchvision": lambda: torchvision_feed(s, device, images, workers)}
    out = {}
    for name, make in feeds.items():
        feed = make()
        out[name] = run_feed(model, feed, s, worker)
        if name == "ours":
            out[name]["decoder"] = decoder.backend
        feed.close()
        if peak:
            out[name]["mfu"] = round(flops_per_image * out[name]["images_per_s"] / (peak * 1e12), 3)
    base = out["torchvision"]["images_per_s"]
    for v in out.values():
        v["ratio_vs_torchvision"] = round(v["images_per_s"] / base, 2)
    return {"settings": s, "device_type": device.type, "gflops_per_image_train": round(flops_per_image / 1e9, 2),
            "peak_bf16_tflops": peak, "dataloader_workers": workers, "feeds": out}


# ---- main ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of both parts (numbers mean little)")
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers for the torchvision feed (default: the CPU count, at most 16)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak dense bf16 TFLOP/s")
    parser.add_argument("--skip-smoke-job", action="store_true", help="part 2 only")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(os.cpu_count() or 1)
    workers = args.workers or min(16, os.cpu_count() or 1)
    result: dict = {"device": torch.cuda.get_device_name() if cuda else cpu_model(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "quick": args.quick}
    if not args.skip_smoke_job:
        with tempfile.TemporaryDirectory(prefix="verydeep-bench-") as tmp:
            result["smoke_job"] = smoke_job(Path(tmp), 1 if args.quick else 3)
        s = settings(False, args.quick)
        net = result["smoke_job"]["net"]
        smoke = {**s, "arch": net["model.arch"], "width": float(net["model.width"]),
                 "fc_width": int(net["model.fc_width"]), "crop": int(net["model.crop"]),
                 "batch": int(net["optim.batch_size"]), "classes": 10}
        result["smoke_job"]["synthetic_in_memory"] = run_feed(
            build(smoke["arch"], num_classes=10, width=smoke["width"], fc_width=smoke["fc_width"],
                  crop=smoke["crop"]).train(), synthetic_feed(smoke, torch.device("cpu")), smoke,
            Worker(0, 1, torch.device("cpu")))
        print_smoke(result["smoke_job"])
    result["step"] = step_part(settings(cuda, args.quick), device, workers, args.peak_tflops)
    print_step(result["step"], result["device"], cuda)
    path = args.json or (None if args.quick else ROOT / "benchmarks" / "results" /
                         f"train_throughput_{'cuda' if cuda else 'cpu'}.json")
    if path is not None:
        write_results(path, result)
    return result


def print_smoke(r: dict) -> None:
    syn = r["synthetic_in_memory"]
    print(f"\nsmoke job ({r['command']}; net {r['net']['model.arch']} width {r['net']['model.width']}, crop "
          f"{r['net']['model.crop']}, batch {r['net']['optim.batch_size']}): wall {r['wall_s']} s")
    print(f"{'':28}{'img/s':>10}{'data wait':>12}")
    print(f"{'job (median window)':28}{r['images_per_s_median']:>10.1f}{r['data_wait_fraction_median']:>12.1%}")
    print(f"{'job (first window)':28}{r['first_window']['images_per_s']:>10.1f}"
          f"{r['first_window']['data_wait_fraction']:>12.1%}")
    print(f"{'same step, synthetic batch':28}{syn['images_per_s']:>10.1f}{syn['data_wait_fraction']:>12.1%}")


def print_step(r: dict, device: str, cuda: bool) -> None:
    s = r["settings"]
    what = "" if cuda else " (CPU stand-in: same code, not the GPU's figures)"
    print(f"\ntraining step on {device}{what}: net {s['arch']} width {s['width']}, crop {s['crop']}, batch "
          f"{s['batch']}, {r['gflops_per_image_train']} GFLOP/image; {s['steps']} timed steps per feed")
    print(f"{'feed':14}{'img/s':>10}{'step ms':>10}{'data wait':>11}{'MFU':>8}{'vs torchvision':>16}")
    for name, v in r["feeds"].items():
        mfu = f"{v['mfu']:.1%}" if "mfu" in v else "-"
        print(f"{name:14}{v['images_per_s']:>10.1f}{v['step_ms']:>10.1f}{v['data_wait_fraction']:>11.1%}{mfu:>8}"
              f"{v['ratio_vs_torchvision']:>15.2f}x")
    if cuda:
        ours = r["feeds"]["ours"]
        met = ours["images_per_s"] >= 4000 and ours["data_wait_fraction"] < 0.02
        print(f"target (H100): >= 4,000 img/s per GPU with data wait < 2%: {ours['images_per_s']:.0f} img/s, "
              f"{ours['data_wait_fraction']:.1%} -> {'met' if met else 'not met'}")

if __name__ == "__main__":
    main()
