"""The GPU check as one command: the CUDA tests, DALI's decode, VGG-16's training step and a short trainer job.

    python benchmarks/gpu_check.py                     # within 8 minutes on one GPU; benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --quick --json OUT  # within ~4 minutes; writes JSON only with --json

Four sections, each in a process of its own with its own time limit, so that a missing package (DALI, Ray, MLflow),
a crash or a hang in one leaves the others to run. Each ends ``ok``, ``failed`` with a one-line reason, or
``skipped`` with the reason; one JSON result holds them all, a short table sums them up, and each section's output
goes to a log beside the JSON.

- ``tests``: ``pytest -m gpu`` over the test files that hold CUDA-marked tests; passed / failed / skipped counts, the
  failures and the reasons for skips.
- ``decode``: ``pipeline.decode``'s DALI training decoder on the GPU (nvJPEG ``mixed`` decode, then the whole
  training transform of ``vgg.augment``: S drawn from [256, 512], 224 crop, flip, PCA colour shift, mean
  subtraction) over ImageNet-like JPEGs (~500x375, ~110 KB) held in host memory, at batch 256: images/s, params
  drawn beforehand. Parity on the same JPEGs and params: against the reference (``vgg.augment.train_reference`` on
  PIL's decode) and against DALI's CPU operators, max / mean / 99th-percentile absolute difference on the 0-255
  scale, judged by the tolerance tests/pipeline/test_decode.py states for DALI on a GPU.
- ``step``: VGG-16 (net D, full width, 1000 classes) at 224, batch 256, bf16 autocast + channels_last (as the
  trainer runs on GPUs), SGD with the paper's momentum and weight decay, on a batch resident on the GPU: forward +
  backward + step timed with CUDA events after warm-up; images/s, MFU and peak memory (``max_memory_allocated``).
  Training FLOPs per image = 6 x the model's multiply-adds (2 FLOPs per multiply-add forward, the backward twice
  the forward): 92.8 GFLOP for VGG-16 at 224 (its "15.5 G" is multiply-adds). MFU is against the device's dense bf16
  datasheet peak (989 TFLOP/s for the H100 SXM and the H200), printed beside it.
- ``trainer``: the real ``python -m trainer.run`` on one GPU worker fed by DALI, VGG-16 at 224, batch 256, on an
  ImageNet-layout tree of ImageNet-like JPEGs that this script writes and ingests with ``python -m pipeline.prepare``
  (8 classes; a few dozen steps); the job's own logged ``perf/images_per_s`` and ``perf/data_wait_pct``, read back from
  its MLflow store (median over its logging windows, the first window of the job reported apart), and its wall time.

Without CUDA it prints one line saying so and exits 0. Exit code 1 when a section failed, else 0.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the script's folder, also when a test imports this file
import imagenet_like as I  # noqa: E402  (benchmarks/, on sys.path as the script's folder)
from machine import peak_bf16_tflops, write_results  # noqa: E402  (benchmarks/, on sys.path as the script's folder)

SECTIONS = ("tests", "decode", "step", "trainer")
# Seconds each section may run (full, --quick): 450 s and 260 s in all, inside the 8 and ~4 minutes promised.
LIMITS = {"tests": (60, 40), "decode": (90, 45), "step": (60, 35), "trainer": (240, 140)}
# DALI on a GPU against the reference and DALI's CPU operators, per image (MAD, p99): tests/pipeline/test_decode.py.
GPU_TOLERANCE = (1.0, 5.0)
CROP, SMIN, SMAX, BATCH = 224, 256, 512, 256


def settings(quick: bool) -> dict:
    """Each section's sizes: a full run, or --quick's shorter one."""
    return {"decode": {"images": 256 if quick else 512, "warmup": 1 if quick else 2, "batches": 6 if quick else 20,
                       "parity": 8 if quick else 16},
            "step": {"arch": "D", "width": 1.0, "crop": CROP, "batch": BATCH, "classes": 1000,
                     "warmup": 5 if quick else 10, "steps": 10 if quick else 30},
            "trainer": {"arch": "D", "width": 1.0, "fc_width": 4096, "crop": CROP, "scale": f"{SMIN},{SMAX}",
                        "batch": BATCH, "classes": 8, "val_per_class": 8,
                        "train_images": 2560 if quick else 5120, "epochs": 1 if quick else 2}}


class Skip(Exception):
    """A section that cannot run here; the message is the reason."""


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def require(module: str) -> None:
    """Skip the section unless ``module`` imports."""
    try:
        importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install (a missing shared library raises OSError)
        raise Skip(f"{module} does not import ({one_line(e)})") from None


# ---- pure arithmetic ----------------------------------------------------------------------------------------------


def train_flops_per_image(multiply_adds: int) -> float:
    """Training FLOPs for one image: 2 per multiply-add forward, and the backward costs twice the forward."""
    return 6.0 * multiply_adds


def mfu(images_per_s: float, flops_per_image: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: the model's FLOPs per second over the device's peak."""
    return images_per_s * flops_per_image / (peak_tflops * 1e12)


def diff_stats(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Absolute differences of two image batches on the 0-255 scale: overall max / mean / p99, the worst image's."""
    d = (out.detach().cpu().double() - ref.detach().cpu().double()).abs()
    per = d.flatten(1)
    mads, p99s = per.mean(1), per.quantile(0.99, dim=1)
    return {"max": round(d.max().item(), 3), "mean": round(d.mean().item(), 4),
            "p99": round(d.flatten().quantile(0.99).item(), 3), "worst_image_mad": round(mads.max().item(), 4),
            "worst_image_p99": round(p99s.max().item(), 3),
            "within_tolerance": bool(((mads < GPU_TOLERANCE[0]) & (p99s < GPU_TOLERANCE[1])).all())}


# ---- the sections (each runs in its own process) ------------------------------------------------------------------


def check_tests(s: dict, device: torch.device, work: Path) -> dict:
    """``pytest -m gpu`` over the files that hold CUDA-marked tests: counts, failures and skip reasons."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                   if "mark.gpu" in p.read_text())
    if not files:
        raise RuntimeError("no test file holds a CUDA-marked test")
    xml = work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", *files, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    if not xml.exists():
        raise RuntimeError(f"pytest exited {proc.returncode} without a report: {proc.stdout.strip()[-200:]}")
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures, skips = [], []
    for case in ET.parse(xml).iter("testcase"):
        name = f"{case.get('classname', '')}.{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            counts["failed"] += 1
            failures.append(f"{name}: {(bad.get('message') or '').splitlines()[0][:200] if bad.get('message') else ''}")
        elif skipped is not None:
            counts["skipped"] += 1
            skips.append(f"{name}: {skipped.get('message', '')[:200]}")
        else:
            counts["passed"] += 1
    result = {"files": files, **counts, "failures": failures, "skips": skips, "pytest_exit": proc.returncode}
    if counts["failed"] or counts["passed"] == 0:
        result["status"] = "failed"
        result["reason"] = failures[0] if failures else f"no CUDA-marked test passed (pytest exit {proc.returncode})"
    return result


def _jpeg(job: tuple[int, int, int]) -> tuple[bytes, int, int]:
    seed, h, w = job
    return I.jpeg(np.random.default_rng(seed), h, w), h, w


def jpeg_set(count: int) -> list[tuple[bytes, int, int]]:
    """ImageNet-like JPEGs in host memory, (bytes, height, width), made on every core (before CUDA starts: fork)."""
    jobs = [(i, *I.SHAPES[i % len(I.SHAPES)]) for i in range(count)]
    with multiprocessing.get_context("fork").Pool(min(16, os.cpu_count() or 1)) as pool:
        return pool.map(_jpeg, jobs, chunksize=8)


def check_decode(s: dict, device: torch.device, work: Path) -> dict:
    """DALI's training decoder on ``device`` at batch 256: images/s; parity with the reference and DALI's CPU ops."""
    require("nvidia.dali")
    from jpeg_samples import decode_reference

    from pipeline.decode import make_train_decoder
    from vgg import augment as A

    images = jpeg_set(s["images"])
    rng = np.random.default_rng(1)
    batches = []
    for b in range(s["warmup"] + s["batches"]):
        picked = [images[(b * BATCH + j) % len(images)] for j in range(BATCH)]
        params = [A.sample_params(rng, h, w, SMIN, SMAX, CROP) for _, h, w in picked]
        batches.append(([d for d, _, _ in picked], params))
    stats = dict(mean=I.MEAN, eigval=I.EIGVAL, eigvec=I.EIGVEC)
    decoder = make_train_decoder("dali", crop=CROP, device=device, batch_size=BATCH, **stats)
    for jpegs, params in batches[: s["warmup"]]:
        decoder(jpegs, params)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for jpegs, params in batches[s["warmup"]:]:
        out = decoder(jpegs, params)
    sync()
    seconds = time.perf_counter() - t0
    assert out.shape == (BATCH, 3, CROP, CROP) and out.device.type == device.type

    n = s["parity"]
    jpegs, params = batches[0][0][:n], batches[0][1][:n]
    got = decoder(jpegs, params)
    reference = torch.stack([A.train_reference(decode_reference(d), p, CROP, np.array(I.MEAN), np.array(I.EIGVAL),
                                               np.array(I.EIGVEC)) for d, p in zip(jpegs, params)])
    dali_cpu = make_train_decoder("dali", crop=CROP, device="cpu", batch_size=n, **stats)(jpegs, params)
    parity = {"images": n, "vs_reference": diff_stats(got, reference), "vs_dali_cpu": diff_stats(got, dali_cpu),
              "tolerance_mad_p99": list(GPU_TOLERANCE)}
    result = {"images_per_s": round(s["batches"] * BATCH / seconds, 1), "batch": BATCH,
              "timed_batches": s["batches"], "distinct_jpegs": len(images),
              "mean_jpeg_kb": round(sum(len(d) for d, _, _ in images) / len(images) / 1024, 1),
              "dali_threads": decoder.num_threads, "parity": parity}
    ref, cpu = parity["vs_reference"], parity["vs_dali_cpu"]
    if not (ref["within_tolerance"] and cpu["within_tolerance"]):
        result["status"] = "failed"
        result["reason"] = (f"parity outside MAD < {GPU_TOLERANCE[0]}, p99 < {GPU_TOLERANCE[1]}: worst image vs "
                            f"reference MAD {ref['worst_image_mad']}, p99 {ref['worst_image_p99']}; vs DALI CPU MAD "
                            f"{cpu['worst_image_mad']}, p99 {cpu['worst_image_p99']}")
    return result


def check_step(s: dict, device: torch.device, work: Path) -> dict:
    """VGG-16's training step at 224, batch 256, bf16 autocast + channels_last: images/s, MFU, peak memory."""
    import torch.nn.functional as F

    from vgg.model import build, multiply_adds

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build(s["arch"], s["classes"], width=s["width"], crop=s["crop"])
    flops = train_flops_per_image(multiply_adds(model))
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(s["batch"], 3, s["crop"], s["crop"], device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s["classes"], (s["batch"],), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()

    for _ in range(s["warmup"]):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for _ in range(s["steps"]):
        step()
    if cuda:
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        seconds = time.perf_counter() - t0
    rate = s["steps"] * s["batch"] / seconds
    name = torch.cuda.get_device_name(device) if cuda else platform.processor()
    peak = peak_bf16_tflops(name)
    result = {"net": f"VGG-{s['arch']}", "crop": s["crop"], "batch": s["batch"], "timed_steps": s["steps"],
              "step_ms": round(1e3 * seconds / s["steps"], 1), "images_per_s": round(rate, 1),
              "gflop_per_image_train": round(flops / 1e9, 2), "achieved_tflops": round(rate * flops / 1e12, 1),
              "peak_bf16_tflops": peak, "mfu": round(mfu(rate, flops, peak), 4) if peak else None,
              "precision": "bf16 autocast, channels_last" if cuda else "fp32"}
    if cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    return result


def run_logged(cmd: list[str], timeout: float) -> str:
    """Run a command to its end, its output copied to this section's log; that output, or a one-line RuntimeError."""
    proc = subprocess.run(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    print(f"$ {' '.join(cmd)}\n{proc.stdout}", flush=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
        last = errors[-1] if errors else (proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{' '.join(cmd[1:4])} exited {proc.returncode}: {last[:300]}")
    return proc.stdout


def imagenet_tree(root: Path, s: dict) -> dict:
    """An ImageNet-layout tree of ImageNet-like JPEGs: train/<wnid>/ and, held out from the same, val/<wnid>/."""
    from pipeline_e2e import make_image_folder

    val = s["val_per_class"] * s["classes"]
    info = make_image_folder(root, s["train_images"] + val, s["classes"])
    for path in sorted((root / "train").glob("*/*.JPEG")):
        index = int(path.stem.rsplit("_", 1)[1])
        if index >= s["train_images"]:  # the last images of each class (i % classes cycles the classes)
            (root / "val" / path.parent.name).mkdir(parents=True, exist_ok=True)
            path.rename(root / "val" / path.parent.name / path.name)
    return info


def logged_rates(tracking: str, run_id: str) -> dict:
    """A trainer run's own ``perf/images_per_s`` and ``perf/data_wait_pct`` windows from MLflow: medians (the wait as a
    fraction), the first window apart."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking)
    rate = [m.value for m in sorted(client.get_metric_history(run_id, "perf/images_per_s"), key=lambda m: m.step)]
    wait = [m.value / 100 for m in sorted(client.get_metric_history(run_id, "perf/data_wait_pct"),
                                          key=lambda m: m.step)]
    if not rate:
        raise RuntimeError(f"MLflow run {run_id} logged no perf/images_per_s")
    # The first window holds the job's start-up (first reads, first kernels, the decoder's first batch): apart.
    return {"images_per_s_median": round(statistics.median(rate[1:] or rate), 1),
            "data_wait_fraction_median": round(statistics.median(wait[1:] or wait), 4),
            "first_window": {"images_per_s": round(rate[0], 1), "data_wait_fraction": round(wait[0], 4)},
            "windows": len(rate)}


def check_trainer(s: dict, device: torch.device, work: Path) -> dict:
    """``python -m trainer.run`` on one worker fed by DALI (on a GPU), on a tree this writes and prepares."""
    for module in ("ray", "mlflow", "nvidia.dali"):  # Ray Train, its MLflow run, and DALI to feed it
        require(module)
    t0 = time.perf_counter()
    cpus = os.cpu_count() or 1
    data = imagenet_tree(work / "tree", s)
    run_logged([sys.executable, "-m", "pipeline.prepare", "--src", str(work / "tree"), "--dst", str(work / "shards"),
                "--stats-images", "200", "--ray-address", "local"], timeout=300)
    prepared_s = time.perf_counter() - t0
    print(f"{s['train_images']} training JPEGs ({data['mean_jpeg_kb']} KB) written and prepared in {prepared_s:.0f} s",
          flush=True)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "trainer.run", "--arch", s["arch"], "--width", str(s["width"]),
           "--fc-width", str(s["fc_width"]), "--crop", str(s["crop"]), "--scale", s["scale"],
           "--data", str(work / "shards" / "manifest.json"), "--decoder", "dali",
           "--gpu", "true" if device.type == "cuda" else "false", "--workers", "1",
           "--cpus-per-worker", str(max(1, min(4, cpus // 4))), "--batch-size", str(s["batch"]),
           "--epochs", str(s["epochs"]), "--name", "gpucheck", "--storage", str(work / "runs"),
           "--tracking-uri", tracking, "--ray-address", "local"]
    t1 = time.perf_counter()
    out = run_logged(cmd, timeout=600)
    found = re.search(r"\(run ([0-9a-f]+)\)", out)
    if found is None:
        raise RuntimeError("the trainer printed no MLflow run id")
    steps = re.search(r"(\d+) steps/epoch", out)
    return {"command": " ".join(["python"] + cmd[1:]), "decoder": "dali",
            "job_wall_s": round(time.perf_counter() - t1, 1), "data_prepare_s": round(prepared_s, 1),
            "steps_per_epoch": int(steps.group(1)) if steps else None,
            **logged_rates(tracking, found.group(1))}


CHECKS: dict[str, Callable[[dict, torch.device, Path], dict]] = {
    "tests": check_tests, "decode": check_decode, "step": check_step, "trainer": check_trainer}


def run_section(name: str, s: dict, device: torch.device, result_path: Path) -> int:
    """Run one section here and write its result (status ok / failed / skipped) as JSON; the child's entry point."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"verydeep-gpu-{name}-") as tmp:
        try:
            result = {"status": "ok", **CHECKS[name](s, device, Path(tmp))}
        except Skip as e:
            result = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # the section failed; its reason goes into the result, the other sections go on
            import traceback

            traceback.print_exc()
            result = {"status": "failed", "reason": one_line(e)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result_path.write_text(json.dumps(result, indent=2))
    return 0


# ---- the parent: every section in a child process, with a time limit ---------------------------------------------


def spawn(name: str, quick: bool, limit: float, log: Path) -> dict:
    """Run section ``name`` in a child process (its own process group) for at most ``limit`` seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":"),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
           # Ray's OOM killer reads MemTotal, which on some VMs starts low and grows with use: a short job on a big
           # machine must not be killed by it.
           "RAY_memory_monitor_refresh_ms": "0"}
    with tempfile.TemporaryDirectory(prefix="verydeep-gpu-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--result", str(result_path)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd + (["--quick"] if quick else []), cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        tail: collections.deque[str] = collections.deque(maxlen=5)

        def drain() -> None:
            with open(log, "w") as f:
                for line in proc.stdout:  # type: ignore[union-attr]
                    f.write(line)
                    if line.strip():
                        tail.append(line.strip())

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the section and everything it started (Ray, pytest, ...)
            proc.wait()
        reader.join(timeout=5)
        seconds = round(time.perf_counter() - t0, 1)
        if result_path.exists():
            return json.loads(result_path.read_text())
        last = tail[-1][:200] if tail else "no output"
        if proc.returncode == -signal.SIGKILL and seconds >= limit:
            return {"status": "failed", "reason": f"timed out after {limit:g} s (last output: {last})",
                    "seconds": seconds}
        how = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
        return {"status": "failed", "reason": f"the section's process ended with {how}: {last}", "seconds": seconds}


def environment() -> dict:
    """What ran: device, driver-side versions, and which optional packages import here."""
    packages = {}
    for module, dist in (("ray", "ray"), ("nvidia.dali", "nvidia-dali-cuda130"), ("mlflow", "mlflow"),
                         ("pyarrow", "pyarrow"), ("pipeline._jpegwindow", None)):
        try:
            importlib.import_module(module)
            packages[module] = importlib.metadata.version(dist) if dist else "built"
        except Exception as e:
            packages[module] = f"missing ({one_line(e)[:120]})"
    props = torch.cuda.get_device_properties(0)
    return {"device": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "packages": packages}


def summary(name: str, r: dict) -> str:
    """One cell of the table: a section's main figures, or its reason."""
    if r["status"] != "ok":
        return r.get("reason", "")
    if name == "tests":
        return f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped"
    if name == "decode":
        ref, cpu = r["parity"]["vs_reference"], r["parity"]["vs_dali_cpu"]
        return (f"{r['images_per_s']:,.0f} img/s at batch {r['batch']}; vs reference max {ref['max']:.1f} mean "
                f"{ref['mean']:.3f}, vs DALI CPU max {cpu['max']:.1f} mean {cpu['mean']:.3f}")
    if name == "step":
        use = (f"MFU {r['mfu']:.1%} of {r['peak_bf16_tflops']:g} TFLOP/s bf16 dense" if r["mfu"] is not None
               else "MFU - (peak unknown for this device)")
        return (f"{r['images_per_s']:,.0f} img/s ({r['step_ms']} ms/step), {r['achieved_tflops']} TFLOP/s, {use}, "
                f"peak mem {r.get('peak_memory_gib', '-')} GiB")
    return (f"{r['images_per_s_median']:,.0f} img/s, data wait {r['data_wait_fraction_median']:.1%} (median of "
            f"{r['windows']} windows; decoder {r['decoder']}), job {r['job_wall_s']} s")


def main(argv: list[str] | None = None) -> int:
    """Run the sections (or, with --section, one of them in this process); 1 when a section failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter sections (~4 minutes in all)")
    parser.add_argument("--json", type=Path, help="where to write the result (default: benchmarks/results/, "
                                                  "without --quick); each section's log goes beside it")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # a child's one section
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}): nothing to check")
        return 0
    if args.section:
        return run_section(args.section, settings(args.quick)[args.section] if args.section != "tests" else {},
                           torch.device("cuda", 0), args.result)
    path = args.json or (None if args.quick else ROOT / "benchmarks" / "results" / "gpu_check.json")
    logs = path.parent if path is not None else Path(tempfile.mkdtemp(prefix="verydeep-gpu-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    stem = path.stem if path is not None else "gpu_check"
    t0 = time.perf_counter()
    result: dict = {"quick": args.quick, **environment(), "sections": {}}
    print(f"gpu_check on {result['device']} (torch {result['torch']}, CUDA {result['cuda']}); packages: "
          + ", ".join(f"{k} {v}" for k, v in result["packages"].items()), flush=True)
    for name in SECTIONS:
        limit = LIMITS[name][1 if args.quick else 0]
        print(f"{name}: running (at most {limit} s) ...", flush=True)
        r = result["sections"][name] = spawn(name, args.quick, limit, logs / f"{stem}.{name}.log")
        print(f"{name}: {r['status']} in {r.get('seconds', 0):.0f} s", flush=True)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"\n{'section':9}{'status':9}{'s':>6}  result")
    for name, r in result["sections"].items():
        print(f"{name:9}{r['status']:9}{r.get('seconds', 0):>6.0f}  {summary(name, r)}")
    print(f"total {result['total_s']:.0f} s; logs in {logs}")
    if path is not None:
        write_results(path, result)
    return 1 if any(r["status"] == "failed" for r in result["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
