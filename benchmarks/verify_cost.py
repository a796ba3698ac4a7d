"""What verifying every shard's Parquet page checksums costs: the same reads with and without, side by side.

    python benchmarks/verify_cost.py            # ~5 minutes on 2 cores; writes benchmarks/results/verify_cost.json
    python benchmarks/verify_cost.py --quick    # smoke run (~2 minutes); writes JSON only with --json PATH

The shards are ImageNet-like JPEGs (benchmarks/imagenet_like.py) ingested with ``pipeline.prepare`` (page checksums
written) into a bucket of a moto S3 server on 127.0.0.1, as in pipeline_e2e.py. Three measurements, each side by
side in alternating order:

1. pyarrow alone: one shard's bytes, in memory, read whole (every column) with and without
   ``page_checksum_verification``: the CPU time the CRC-32s add per GB, with no I/O around it.
2. The read path: Ray Data over every shard from S3 into this process as numpy batches of 32 rows, no decoding, one
   epoch after another: ``pipeline.verify.ShardDatasource`` verifying (what training reads through), the same
   without verifying, and Ray's ``read_parquet`` (its default V2 reader: the reader training used before, which
   cannot verify). The cost shows here if anywhere: nothing else is done with the bytes.
3. End to end, pipeline_e2e.py's Ray side: a Ray Train worker receiving decoded, augmented (32, 3, 224, 224) batches
   through ``iter_epoch`` + ``TrainCollate``, verifying and not. Images/s over whole epochs after a warm-up epoch.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pipeline_e2e as E  # noqa: E402  (benchmarks/, on sys.path as the script's folder)
from machine import cpu_model, write_results  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "verify_cost.json"
READERS = ("verified", "unverified", "read_parquet")


def pyarrow_cost(data: bytes, repeats: int) -> dict:
    """Seconds per GB to read one shard's bytes whole, with and without page checksum verification (best of n)."""
    from pipeline.verify import read_verified

    best = {True: float("inf"), False: float("inf")}
    for _ in range(repeats):
        for verify in (True, False):
            t0 = time.perf_counter()
            read_verified(pa.BufferReader(data), "memory", verify=verify)
            best[verify] = min(best[verify], time.perf_counter() - t0)
    gb = len(data) / 1e9
    return {"shard_mb": round(len(data) / 1e6, 1), "verified_s_per_gb": round(best[True] / gb, 3),
            "unverified_s_per_gb": round(best[False] / gb, 3),
            "crc_s_per_gb": round((best[True] - best[False]) / gb, 3)}


def dataset(reader: str, shards: list[str], seed: int = 0):
    """The training read of ``reader`` over the shards (per-epoch shard shuffle, the pipeline's columns)."""
    import ray
    from ray.data import FileShuffleConfig

    from pipeline import storage
    from pipeline.dataset import COLUMNS
    from pipeline.verify import ShardDatasource

    fs, _ = storage.resolve(shards[0])
    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True)
    if reader == "read_parquet":
        # As the training read was before verification: one footer-reading actor on a small node.
        os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
        return ray.data.read_parquet(shards, filesystem=fs, shuffle=shuffle).select_columns(COLUMNS)
    return ray.data.read_datasource(ShardDatasource(shards, COLUMNS, verify=reader == "verified", filesystem=fs,
                                                    shuffle=shuffle))


def read_epochs(reader: str, shards: list[str], epochs: int) -> dict:
    """A warm-up epoch then ``epochs`` timed ones of numpy batches in this process: images/s and MB/s per epoch."""
    ds = dataset(reader, shards)
    rates, mbs = [], []
    for epoch in range(1 + epochs):
        n, nbytes, t0 = 0, 0, time.perf_counter()
        for batch in ds.iter_batches(batch_size=E.BATCH, batch_format="numpy"):
            n += len(batch["key"])
            nbytes += sum(len(b) for b in batch["image"])
        if epoch:
            seconds = time.perf_counter() - t0
            rates.append(round(n / seconds, 1))
            mbs.append(round(nbytes / seconds / 1e6, 1))
    return {"img_per_s": rates, "mb_per_s": mbs, "images": n}


def main(argv: list[str] | None = None) -> dict:
    """Run the three measurements, print them, write the JSON; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 images, fewer rounds: a smoke run")
    parser.add_argument("--images", type=int, default=2048, help="training images (ImageNet-like JPEGs)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--shard-mb", type=float, default=16.0, help="ingestion: target shard size (MiB)")
    parser.add_argument("--read-rounds", type=int, default=2, help="rounds of the three readers, alternating")
    parser.add_argument("--read-epochs", type=int, default=2, help="timed read epochs per reader and round")
    parser.add_argument("--e2e-images", type=int, default=1024, help="images of the end-to-end part (a subset)")
    parser.add_argument("--e2e-runs", type=int, default=2, help="end-to-end runs of each side, alternating")
    parser.add_argument("--e2e-epochs", type=int, default=2, help="timed epochs per end-to-end run")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2, help="Ray: logical CPUs of the node")
    parser.add_argument("--workdir", type=Path, default=None, help="where the JPEGs go (reused when complete)")
    parser.add_argument("--json", type=Path, default=None, help=f"where to write results (default {RESULTS.name})")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.read_rounds, args.read_epochs, args.e2e_images, args.e2e_runs, args.e2e_epochs = (
            256, 1, 1, 128, 1, 1)
        args.shard_mb = 4.0
    out_path = args.json or (None if args.quick else RESULTS)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="verify-cost-"))
    root = workdir / "imagefolder"
    data = E.make_image_folder(root, args.images, args.classes)
    server, endpoint = E.start_s3()
    import ray

    from pipeline import storage
    from pipeline.prepare import PrepareConfig, prepare

    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        manifest = prepare(PrepareConfig(src=str(root), dst=f"s3://{E.BUCKET}/shards", target_shard_mb=args.shard_mb,
                                         row_group_mb=min(32.0, args.shard_mb / 4), stats_images=100))
        shards = manifest.shard_uris("train")
        print(f"{data['images']} JPEGs ({data['mean_jpeg_kb']} KB) in {len(shards)} shards on {endpoint}", flush=True)

        alone = pyarrow_cost(storage.read_bytes(shards[0]), repeats=5)
        print(f"1. pyarrow, one {alone['shard_mb']} MB shard in memory: {alone['verified_s_per_gb']} s/GB verified, "
              f"{alone['unverified_s_per_gb']} s/GB not: the CRCs cost {alone['crc_s_per_gb']} s/GB", flush=True)

        reads: dict[str, list[dict]] = {r: [] for r in READERS}
        for round_ in range(args.read_rounds):
            for reader in READERS[round_ % 3:] + READERS[: round_ % 3]:
                reads[reader].append(read_epochs(reader, shards, args.read_epochs))
                print(f"2. round {round_ + 1} {reader:12s}: {reads[reader][-1]['img_per_s']} img/s, "
                      f"{reads[reader][-1]['mb_per_s']} MB/s", flush=True)

        # End to end on a subset of shards (the decode dominates: its epochs are the slow part of this benchmark).
        per_shard = max(1, manifest.split("train").count // len(shards))
        subset = shards[: max(1, args.e2e_images // per_shard)]
        e2e_args = argparse.Namespace(epochs=args.e2e_epochs, prefetch=2, shuffle_buffer=256, worker_cpus=0.5)
        e2e: dict[str, list[dict]] = {"verified": [], "unverified": []}
        for run in range(args.e2e_runs):
            for reader in ("verified", "unverified") if run % 2 == 0 else ("unverified", "verified"):
                result = E.run_ray(subset, e2e_args, str(workdir / "ray-results"), dataset(reader, subset))
                e2e[reader].append(result)
                print(f"3. run {run + 1} {reader:10s}: whole epochs {result['epoch_img_per_s']} img/s "
                      f"({result['images']} images)", flush=True)
    finally:
        ray.shutdown()
        server.stop()

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(x for r in runs for x in r[key])

    result = {
        "command": " ".join(["python", "benchmarks/verify_cost.py", *sys.argv[1:]]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "setup": {"images": data["images"], "mean_jpeg_kb": data["mean_jpeg_kb"], "shards": len(shards),
                  "shard_mb": args.shard_mb, "batch": E.BATCH, "ray_logical_cpus": args.ray_cpus,
                  "s3": "moto server on 127.0.0.1 (in the benchmark process)",
                  "e2e": {"images": e2e["verified"][0]["images"], "shards": len(subset), "train_workers": 1,
                          "worker_cpus": 0.5, "prefetch_batches": 2, "decoder": e2e["verified"][0]["decoder_backend"]}},
        "pyarrow_in_memory": alone,
        "read_path": {"rounds": reads,
                      "median_img_per_s": {r: median(reads[r], "img_per_s") for r in READERS},
                      "median_mb_per_s": {r: median(reads[r], "mb_per_s") for r in READERS}},
        "end_to_end": {"runs": e2e, "median_img_per_s": {r: median(e2e[r], "epoch_img_per_s") for r in e2e}},
    }
    read_med, e2e_med = result["read_path"]["median_img_per_s"], result["end_to_end"]["median_img_per_s"]
    result["ratio_verified_to_unverified"] = {"read_path": round(read_med["verified"] / read_med["unverified"], 3),
                                              "end_to_end": round(e2e_med["verified"] / e2e_med["unverified"], 3)}
    print(f"\nverification cost, images/s medians (verified | unverified | ratio):\n"
          f"  pyarrow in memory   {alone['verified_s_per_gb']} | {alone['unverified_s_per_gb']} s/GB\n"
          f"  read path (no decode) {read_med['verified']:.0f} | {read_med['unverified']:.0f} | "
          f"{result['ratio_verified_to_unverified']['read_path']:.3f}  (Ray read_parquet: "
          f"{read_med['read_parquet']:.0f})\n"
          f"  end to end (decoded)  {e2e_med['verified']:.0f} | {e2e_med['unverified']:.0f} | "
          f"{result['ratio_verified_to_unverified']['end_to_end']:.3f}")
    if out_path is not None:
        write_results(out_path, result)
    return result


if __name__ == "__main__":
    main()
