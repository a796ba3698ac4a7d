"""What ``--max-shorter-side`` buys: shard size and decode speed, on large JPEGs.

    python benchmarks/prepare_shorter_side.py            # 48 images of 2000x1500, about a minute on 2 cores
    python benchmarks/prepare_shorter_side.py --smoke    # 8 images, seconds

Generates photo-like JPEGs (smooth random colour fields with edges and fine texture, quality 90 and 4:2:0 like
camera output), writes one real shard per setting with ``pipeline.shards.build_shard`` (no Ray: one process),
then decodes the stored images back on one core with PIL and with ``torchvision.io.decode_jpeg``. Prints a table
and writes ``benchmarks/results/prepare_shorter_side.json``.

What to expect: the paper trains at S in [256, 512] and tests at Q up to 512, so a stored shorter side of 512 loses
nothing it uses; at 2000x1500 it shrinks shards several-fold and decodes several times faster, which is what an
input pipeline pays for every epoch. Ingestion pays once for the resize.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import prepare as prep  # noqa: E402
from pipeline.shards import ShardPlan, SourceFile, build_shard  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "prepare_shorter_side.json"
SETTINGS = (None, 800, 512, 384, 256)


def photo_like(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG with a photo's mix of smooth regions, edges and texture (random content compresses unlike photos)."""
    coarse = rng.uniform(0, 255, size=(height // 100 + 2, width // 100 + 2, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = 20 * np.sin(xx / rng.uniform(3, 9) + yy / rng.uniform(5, 15))[..., None]
    edges = np.where((xx // rng.integers(150, 400) + yy // rng.integers(150, 400)) % 2 == 0, 25.0, -25.0)[..., None]
    grain = rng.normal(0, 4, size=(height, width, 1)).astype(np.float32)
    img = np.clip(base + stripes + edges + grain, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="JPEG", quality=90)
    return out.getvalue()


def decode_rate_pil(images: list[bytes], repeats: int) -> float:
    """Images/s for a full PIL decode to an RGB array, one core."""
    start = time.perf_counter()
    for _ in range(repeats):
        for data in images:
            with Image.open(io.BytesIO(data)) as img:
                np.asarray(img.convert("RGB"))
    return repeats * len(images) / (time.perf_counter() - start)


def decode_rate_torchvision(images: list[bytes], repeats: int) -> float | None:
    """Images/s for torchvision.io.decode_jpeg on a batch (list) of encoded tensors, one core; None if unavailable."""
    try:
        import torch
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    torch.set_num_threads(1)
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in images]
    decode_jpeg(tensors[:1])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        decode_jpeg(tensors)
    return repeats * len(images) / (time.perf_counter() - start)


def run(n_images: int, width: int, height: int, repeats: int) -> dict:
    """Generate the images, write one shard per setting, measure; returns the results document."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    sources = [photo_like(rng, width, height) for _ in range(n_images)]
    print(
        f"generated {n_images} JPEGs of {width}x{height} in {time.perf_counter() - t0:.1f} s "
        f"({sum(map(len, sources)) / n_images / 1024:.0f} KiB each)",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for i, data in enumerate(sources):
            path = src / "train" / "n00000001" / f"n00000001_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        files = tuple(
            SourceFile(f"train/n00000001/n00000001_{i}", f"train/n00000001/n00000001_{i}.JPEG", len(d), 0, "n00000001")
            for i, d in enumerate(sources)
        )
        for setting in SETTINGS:
            cfg = prep.PrepareConfig(
                src=str(src),
                dst=str(Path(tmp) / f"dst-{setting}"),
                max_shorter_side=setting,
                read_threads=1,  # one core: ingestion cost per image, comparable across settings
            )
            fingerprint = hashlib.sha256(str(setting).encode()).hexdigest()
            spec = prep.shard_spec(cfg, ShardPlan("train", 0, 1, files), fingerprint, cfg.src, cfg.dst)
            start = time.perf_counter()
            record = build_shard(spec)
            ingest_s = time.perf_counter() - start
            import pyarrow.parquet as pq

            table = pq.read_table(Path(cfg.dst) / spec.name)
            stored = table.column("image").to_pylist()
            rows.append(
                {
                    "max_shorter_side": setting,
                    "stored_size": f"{table.column('width')[0].as_py()}x{table.column('height')[0].as_py()}",
                    "shard_bytes": record["bytes"],
                    "bytes_per_image": record["bytes"] / n_images,
                    "ingest_images_per_s": n_images / ingest_s,
                    "decode_pil_images_per_s": decode_rate_pil(stored, repeats),
                    "decode_torchvision_images_per_s": decode_rate_torchvision(stored, repeats),
                }
            )
            print(f"  done max_shorter_side={setting}", flush=True)
    base = rows[0]
    for r in rows:
        r["shard_size_vs_original"] = r["shard_bytes"] / base["shard_bytes"]
        r["pil_speedup"] = r["decode_pil_images_per_s"] / base["decode_pil_images_per_s"]
        if r["decode_torchvision_images_per_s"] and base["decode_torchvision_images_per_s"]:
            r["torchvision_speedup"] = r["decode_torchvision_images_per_s"] / base["decode_torchvision_images_per_s"]
    import PIL

    return {
        "benchmark": "prepare --max-shorter-side: shard size and decode speed",
        "images": n_images,
        "source_size": f"{width}x{height}",
        "source_jpeg_quality": 90,
        "reencode_quality": prep.PrepareConfig(src="a", dst="b").jpeg_quality,
        "decode_repeats": repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pillow": PIL.__version__,
            "processor": platform.machine(),
        },
        "rows": rows,
    }


def print_table(doc: dict) -> None:
    """The results as a fixed-width table."""
    print(f"\n{doc['images']} JPEGs of {doc['source_size']}; decode on one core\n")
    head = (
        f"{'max shorter side':>16} {'stored':>10} {'MiB/1k img':>11} {'size':>6} {'ingest img/s':>13}"
        f" {'PIL img/s':>10} {'x':>5} {'tv img/s':>9} {'x':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in doc["rows"]:
        tv, nan = r["decode_torchvision_images_per_s"], float("nan")
        mib_per_1k = r["bytes_per_image"] * 1000 / 2**20
        print(
            f"{str(r['max_shorter_side'] or 'original'):>16} {r['stored_size']:>10} {mib_per_1k:>11.1f}"
            f" {r['shard_size_vs_original']:>6.2f} {r['ingest_images_per_s']:>13.1f}"
            f" {r['decode_pil_images_per_s']:>10.1f} {r['pil_speedup']:>5.1f}"
            f" {(tv or nan):>9.1f} {r.get('torchvision_speedup', nan):>5.1f}"
        )


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3, help="decode passes over the stored images")
    parser.add_argument("--smoke", action="store_true", help="8 images, 1 decode pass, no JSON written")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.repeats = 8, 1
    doc = run(args.images, args.width, args.height, args.repeats)
    print_table(doc)
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {RESULTS.relative_to(Path(__file__).resolve().parents[1])}")


if __name__ == "__main__":
    main()
