"""Ingest ImageNet into Parquet shards + ``manifest.json`` (one Ray task per shard): ``python -m pipeline.prepare``.

    python -m pipeline.prepare --src /data/imagenet --dst s3://bucket/imagenet-shards
    python -m pipeline.prepare --src s3://raw/imagenet --dst s3://bucket/shards-512 --max-shorter-side 512
    python -m pipeline.prepare --layout caltech101 --src ... --dst ...   transfer targets (pipeline/targets.py)

Source layout (local directory or ``s3://`` prefix)::

    train/<wnid>/*.JPEG                          the classes are the sorted wnids of train/
    val/<wnid>/*.JPEG                            val in class folders, or
    val/ILSVRC2012_val_00000001.JPEG ...         val flat, labelled by one of:
      LOC_val_solution.csv                         header ImageId,PredictionString; first token = wnid
      ILSVRC2012_validation_ground_truth.txt       the devkit's: one 1-based ILSVRC2012_ID per line, in image order,
        + a synset mapping (--val-synsets):          devkit meta.mat (read with scipy), or a text file with one
                                                     wnid per line in ILSVRC2012_ID order (line 1 = ID 1; text
                                                     after the wnid is ignored). LOC_synset_mapping.txt is in
                                                     sorted-wnid order, NOT ID order: do not pass it here.

Without ``--val-labels`` the source root is searched for ``LOC_val_solution.csv``, then
``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` (with ``meta.mat`` beside it), then
``ILSVRC2012_validation_ground_truth.txt``.

Output::

    DST/train/train-00000-of-00543.parquet ...   columns key, label, wnid, image (RGB JPEG bytes), height, width
    DST/val/val-00000-of-00025.parquet ...
    DST/manifest.json                            written last (schema in pipeline/manifest.py)

Keys are ``<split>/<wnid>/<file stem>`` whatever the source layout. Ordinary RGB JPEGs are stored byte for byte;
CMYK and grayscale JPEGs and non-JPEG images (a PNG named .JPEG) are re-encoded as RGB JPEGs (16-bit grey scaled
to 8 bits, not clipped), and with ``--max-shorter-side`` larger images are resized (Lanczos) and re-encoded. Empty,
truncated and non-image files, symlinks that lead nowhere (dangling or looping), and images whose header declares
more than ``--max-megapixels`` (checked before any decoding) are skipped and listed in the manifest.

The default ``--max-megapixels 64`` (8000x8000) lets every ImageNet image through with room to spare (the largest
are camera photos on the order of 4,000-5,000 pixels a side) while refusing small files that declare huge sizes:
64 MP decode to 192 MB of RGB, and a 4 KB JPEG that declares 12000x12000 would take 432 MB on every decode.
Pillow's own decompression-bomb check still refuses more than 179 megapixels, whatever the flag.

EXIF orientation is ignored, as ImageNet's standard loaders (PIL, torchvision's ImageFolder) ignore it: pixels are
stored and decoded in their stored order, so results stay comparable with published ImageNet numbers. JPEGs kept
byte for byte keep their EXIF block; re-encoded images carry none.

Restartable: the shard plan is a pure function of the source listing and the options, every shard is committed
atomically, and a rerun keeps each shard already written for the same plan. Killed at any point and run again,
it ends with the same manifest, byte for byte, as a run that was never interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline import cluster, storage
from pipeline.cli import Checked, check_http_url, option, parse, require
from pipeline.convert import CONVERTER_VERSION, MAX_MEGAPIXELS, colour_stats
from pipeline.imagenet import Listing, PrepareError, scan_source
from pipeline.manifest import MANIFEST_NAME, Manifest, ManifestError, Shard, Split, Stats, load_manifest
from pipeline.shards import (
    MiB,
    ShardPlan,
    ShardSpec,
    build_shard,
    plan_shards,
    shard_fingerprint,
    stray_shards,
)
from pipeline.storage import StorageError
from pipeline.targets import TargetOptions, parse_target, scan_target
from pipeline.units import UnitError, run_units


PROG = "python -m pipeline.prepare"
WHERE, SHARDS, IMAGES, LABELS, STATS, RUNNING = ("where", "shards", "images", "labels of a flat val/",
                                                 "colour statistics (the paper's colour shift)", "running")


@dataclass(frozen=True)
class PrepareConfig(Checked):
    """Options of one ingestion run; the CLI flags are generated from these fields (pipeline.cli)."""

    src: str = option(help="source root with train/ and optionally val/: a local path or s3://bucket/prefix",
                      metavar="URI", group=WHERE)
    dst: str = option(help="where the shards and manifest.json go: a local path or s3://bucket/prefix",
                      metavar="URI", group=WHERE)
    target_shard_mb: float = option(256.0, "target shard size in MiB of source bytes (object-storage friendly: "
                                           "100-500)", metavar="MIB", group=SHARDS)
    max_rows_per_shard: int | None = option(None, "cap on images per shard; none = no cap", metavar="N",
                                            group=SHARDS)
    row_group_mb: float = option(32.0, "target Parquet row-group size in MiB (the streaming unit)", metavar="MIB",
                                 group=SHARDS)
    max_shorter_side: int | None = option(None, "resize images whose shorter side is larger to this (512 keeps all "
                                                "the paper uses: S, Q <= 512); none = keep every size",
                                          metavar="PIXELS", group=IMAGES)
    jpeg_quality: int = option(95, "JPEG quality for re-encoded images (converted or resized)", metavar="1-100",
                               group=IMAGES)
    max_megapixels: float = option(MAX_MEGAPIXELS, "skip images whose header declares more than this many million "
                                                   "pixels (width x height), without decoding them (ImageNet's "
                                                   "largest images are well under this)", metavar="MP", group=IMAGES)
    val_labels: str | None = option(None, "LOC_val_solution.csv or the devkit's ground-truth txt; none = found in "
                                          "the source root", metavar="FILE", group=LABELS)
    val_synsets: str | None = option(None, "with the devkit txt: meta.mat, or a text file of wnids in ILSVRC2012_ID "
                                           "order; none = meta.mat beside the txt", metavar="FILE", group=LABELS)
    stats_images: int = option(10_000, "training images sampled for the mean RGB and colour PCA", metavar="N",
                               group=STATS)
    stats_pixels_per_image: int = option(1_000, "pixels drawn from each sampled image", metavar="N", group=STATS)
    s3_endpoint: str | None = option(None, "S3 endpoint URL; none = AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, "
                                           "else AWS", metavar="URL", group=WHERE)
    s3_region: str | None = option(None, "S3 region; none = AWS_REGION, else AWS_DEFAULT_REGION", metavar="REGION",
                                   group=WHERE)
    num_cpus: int | None = option(None, "CPUs of a local Ray; none = the cores (ignored when joining a cluster)",
                                  metavar="N", group=RUNNING)
    ray_address: str | None = option(None, "Ray to use: auto = the cluster running on this machine, local = a Ray "
                                           "of this job's own, host:port or ray://host:port = that cluster; none = "
                                           "RAY_ADDRESS, else a running cluster, else a local Ray", metavar="ADDRESS",
                                     group=RUNNING)
    read_threads: int = option(16, "concurrent source reads inside each shard task (I/O bound)", metavar="N",
                               group=RUNNING)

    def check(self) -> None:
        """Sizes and counts positive, the JPEG quality in 1..100, the endpoint a URL, the Ray address a known form."""
        for name in ("target_shard_mb", "row_group_mb", "max_megapixels", "stats_images", "stats_pixels_per_image",
                     "read_threads"):
            require(getattr(self, name) > 0, name, getattr(self, name), "a positive number")
        for name in ("max_rows_per_shard", "max_shorter_side", "num_cpus"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, "an integer >= 1 or none")
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "an integer in 1..100")
        check_http_url("s3_endpoint", self.s3_endpoint)
        require(self.ray_address is None or cluster.is_address(self.ray_address), "ray_address", self.ray_address,
                cluster.ADDRESS_FORMS)

    @property
    def target_shard_bytes(self) -> int:
        """Target shard size in bytes."""
        return int(self.target_shard_mb * MiB)

    @property
    def content_options(self) -> dict[str, typing.Any]:
        """The options that change a shard's bytes for the same source files (part of each shard's fingerprint)."""
        return {
            "max_shorter_side": self.max_shorter_side,
            "jpeg_quality": self.jpeg_quality,
            "max_megapixels": self.max_megapixels,
            "row_group_mb": self.row_group_mb,
            "stats_pixels_per_image": self.stats_pixels_per_image,
        }


# Fields that shape the output; the rest (where it goes, how fast) stay out of the manifest.
_RECORDED_OPTIONS = (
    "src",
    "target_shard_mb",
    "max_rows_per_shard",
    "row_group_mb",
    "max_shorter_side",
    "jpeg_quality",
    "max_megapixels",
    "stats_images",
    "stats_pixels_per_image",
)


def parse_args(argv: Sequence[str] | None = None) -> PrepareConfig:
    """Parse CLI arguments into a validated PrepareConfig; bad input exits with one ``error:`` line, code 2."""
    return parse(PrepareConfig, argv, PROG, "\n\n".join(__doc__.split("\n\n")[:2]),
                 formatter_class=argparse.RawDescriptionHelpFormatter)


# ---------------------------------------------------------------------------------------------------------------------
# The job


def _normalise(uri: str) -> str:
    return uri.rstrip("/") if "://" in uri else os.path.abspath(uri)


def check_locations(cfg: PrepareConfig) -> tuple[str, str]:
    """The normalised source and destination: both reachable, the destination not inside the source."""
    ep, rg = cfg.s3_endpoint, cfg.s3_region
    cluster.check_job_output("--dst", cfg.dst, "an absolute path on shared storage or s3://bucket/prefix")
    src, dst = _normalise(cfg.src), _normalise(cfg.dst)
    # Storage is checked before Ray starts, so that a bad bucket or key ends in one line, not a cluster's worth.
    storage.check_access(src, create=False, endpoint=ep, region=rg)
    if not storage.is_s3(dst) and not storage.is_s3(src) and (dst + "/").startswith(src + "/"):
        raise PrepareError(f"destination {dst} is inside the source {src}")
    storage.check_access(dst, create=True, endpoint=ep, region=rg)
    return src, dst


def plan_splits(cfg: PrepareConfig, listing: Listing) -> list[ShardPlan]:
    """Every split's shards, train first; the colour-statistics sample is drawn from train only."""
    return [
        p
        for split in listing.files  # ImageNet's SPLITS; a transfer target's own (pipeline.targets)
        if listing.files[split]
        for p in plan_shards(
            listing.files[split],
            split,
            cfg.target_shard_bytes,
            cfg.max_rows_per_shard,
            cfg.stats_images if split == "train" else 0,
        )
    ]


def recorded_options(cfg: PrepareConfig, src: str, listing: Listing, fingerprints: dict[str, str]) -> dict:
    """The manifest's options: those that shape the output, how val was labelled, and a digest of the whole plan."""
    plan_doc = {"classes": listing.classes, "shards": fingerprints, "skipped": listing.skipped}
    target = {"target": listing.target} if listing.target else {}
    return {name: getattr(cfg, name) for name in _RECORDED_OPTIONS} | target | {
        "src": src,
        "val_layout": listing.val_layout,
        "val_labels": listing.val_labels,
        "val_synsets": listing.val_synsets,
        "converter_version": CONVERTER_VERSION,
        "plan_sha256": hashlib.sha256(json.dumps(plan_doc | target, sort_keys=True).encode()).hexdigest(),
    }


def _retire_other_plan(manifest_uri: str, plan_sha256: str, endpoint: str | None, region: str | None) -> None:
    if storage.exists(manifest_uri, endpoint, region):
        try:
            old_plan = load_manifest(manifest_uri, endpoint, region).options.get("plan_sha256")
        except ManifestError:
            old_plan = None
        if old_plan != plan_sha256:
            # A different plan will overwrite shards the old manifest lists: it must not outlive that.
            storage.remove(manifest_uri, endpoint, region)


def shard_spec(cfg: PrepareConfig, plan: ShardPlan, fingerprint: str, src: str, dst: str) -> ShardSpec:
    """What the task of one planned shard needs."""
    return ShardSpec(
        name=plan.name,
        fingerprint=fingerprint,
        files=plan.files,
        src=src,
        dst=dst,
        endpoint=cfg.s3_endpoint,
        region=cfg.s3_region,
        read_threads=cfg.read_threads,
        row_group_bytes=int(cfg.row_group_mb * MiB),
        max_shorter_side=cfg.max_shorter_side,
        jpeg_quality=cfg.jpeg_quality,
        max_megapixels=cfg.max_megapixels,
        stats_pixels_per_image=cfg.stats_pixels_per_image,
    )


def _run_shards(specs: Sequence[ShardSpec], memory_per_task: int) -> Iterator[dict]:
    # One Ray task per planned shard: it reads, validates and converts its files and writes its shard. Compared with
    # a per-file Ray Data map followed by a groupby (or write_parquet), this moves no image bytes through the object
    # store, names every file exactly, commits each shard atomically in the task that made it, and lets a rerun skip
    # a finished shard without reading its source files. Retried without limit where a worker dies (a shard is
    # rewritten whole, atomically), as Ray Data's tasks are.
    try:
        for _, record in run_units(build_shard, specs, num_cpus=1, memory=memory_per_task, max_retries=-1):
            yield record
    except UnitError as e:
        raise e.cause from e  # a StorageError or PrepareError is its own one line


def build_shards(cfg: PrepareConfig, specs: Sequence[ShardSpec]) -> dict[str, dict]:
    """Every shard written (or kept): name -> its record. Progress is a bar (tqdm) on a terminal, else one line per
    shard as it finishes (logs keep every line; a bar there would be carriage returns)."""
    from tqdm import tqdm

    results: dict[str, dict] = {}
    memory = 3 * max(cfg.target_shard_bytes, 64 * MiB)  # source bytes + table + encoded Parquet, held at once
    with tqdm(total=len(specs), unit="shard", desc="shards", disable=not sys.stderr.isatty()) as bar:
        for r in _run_shards(specs, memory):
            results[r["name"]] = r
            line = f"{r['name']}: {r['rows']} rows, {r['bytes'] / MiB:.1f} MiB, {r['status']}"
            if bar.disable:
                print(f"[{len(results)}/{len(specs)}] {line}", flush=True)
            else:
                bar.set_postfix_str(line, refresh=False)
                bar.update()
    return results


def assemble_manifest(
    dst: str, listing: Listing, plans: Sequence[ShardPlan], results: dict[str, dict], options: dict
) -> Manifest:
    """The manifest of the finished shards: splits in plan order, colour statistics from the shards' exact sums."""
    splits = {}
    for split in listing.files:
        shards = [results[p.name] for p in plans if p.split == split]
        if shards:
            entries = tuple(Shard(r["name"], r["rows"], r["bytes"], r["sha256"]) for r in shards)
            splits[split] = Split(sum(s.rows for s in entries), entries)
    train = [results[p.name]["stats"] for p in plans if p.split == "train"]
    count = sum(s["pixels"] for s in train)
    if count == 0:
        raise PrepareError("no training image could be decoded: nothing to compute the colour statistics on")
    mean, eigval, eigvec = colour_stats(
        count, np.sum([s["sum"] for s in train], axis=0), np.sum([s["outer"] for s in train], axis=0)
    )
    stats = Stats(
        tuple(mean.tolist()),
        tuple(eigval.tolist()),
        tuple(tuple(row) for row in eigvec.tolist()),
        sum(s["images"] for s in train),
        count,
    )
    skipped = sorted(listing.skipped + [s for r in results.values() for s in r["skipped"]], key=lambda s: s["path"])
    return Manifest(dst, listing.classes, splits, stats, tuple(skipped), options)


def _report(manifest: Manifest, manifest_uri: str, plans: Sequence[ShardPlan], results: dict[str, dict],
            cfg: PrepareConfig, seconds: float) -> None:
    skipped = manifest.skipped
    for s in skipped[:20]:
        print(f"skipped {s['path']}: {s['reason']}", flush=True)
    if len(skipped) > 20:
        print(f"... and {len(skipped) - 20} more skipped files (all listed in {manifest_uri})", flush=True)
    stray = stray_shards(manifest.root, {p.name for p in plans}, cfg.s3_endpoint, cfg.s3_region, list(manifest.splits))
    if stray:
        print(
            f"note: {len(stray)} Parquet files under {manifest.root} are not in the manifest (an earlier plan), "
            f"e.g. {stray[0]}",
            flush=True,
        )
    written = sum(r["status"] == "written" for r in results.values())
    converted = sum(r.get("converted", 0) for r in results.values())
    resized = sum(r.get("resized", 0) for r in results.values())
    total_bytes = sum(r["bytes"] for r in results.values())
    print(
        "done: "
        + ", ".join(f"{name} {sp.count} images" for name, sp in manifest.splits.items())
        + f"; skipped {len(skipped)} files; {len(results)} shards ({written} written, {len(results) - written} kept),"
        f" {total_bytes / MiB:.1f} MiB; converted {converted} to RGB, resized {resized};"
        f" {seconds:.1f} s; manifest {manifest_uri}",
        flush=True,
    )


def prepare(cfg: PrepareConfig, target: TargetOptions | None = None) -> Manifest:
    """Run the ingestion job end to end and return the manifest it wrote (or found already complete); ``target``: a
    transfer target's layout and split rule instead of ImageNet's layout (``pipeline.targets``)."""
    start = time.monotonic()
    ep, rg = cfg.s3_endpoint, cfg.s3_region
    if target is not None and (cfg.val_labels or cfg.val_synsets):
        raise PrepareError("--val-labels and --val-synsets belong to the imagenet layout")
    src, dst = check_locations(cfg)
    if target is not None:
        listing = scan_target(target, src, ep, rg)
    else:
        listing = scan_source(src, val_labels=cfg.val_labels, val_synsets=cfg.val_synsets, endpoint=ep, region=rg)
    plans = plan_splits(cfg, listing)
    fingerprints = {p.name: shard_fingerprint(p, cfg.content_options) for p in plans}
    options = recorded_options(cfg, src, listing, fingerprints)
    manifest_uri = storage.join(dst, MANIFEST_NAME)
    _retire_other_plan(manifest_uri, options["plan_sha256"], ep, rg)
    storage.remove_stale_temps(dst)
    n_files = {s: len(f) for s, f in listing.files.items()}
    print(
        f"planned {len(plans)} shards: " + ", ".join(f"{s} {n} files" for s, n in n_files.items() if n),
        f"({len(listing.skipped)} left out by the listing); classes {len(listing.classes)}",
        flush=True,
    )

    cluster.connect(cfg.ray_address, local_cpus=cfg.num_cpus or os.cpu_count() or 1)
    results = build_shards(cfg, [shard_spec(cfg, p, fingerprints[p.name], src, dst) for p in plans])

    manifest = assemble_manifest(dst, listing, plans, results, options)
    text = manifest.to_json().encode()
    if not (storage.exists(manifest_uri, ep, rg) and storage.read_bytes(manifest_uri, ep, rg) == text):
        storage.write_bytes_atomic(manifest_uri, text, ep, rg)  # last: it lists only committed shards
    _report(manifest, manifest_uri, plans, results, cfg, time.monotonic() - start)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run the job; known failures print one ``error:`` line and return 2."""
    target, argv = parse_target(sys.argv[1:] if argv is None else argv)  # --layout and a transfer target's flags
    cfg = parse_args(argv)
    try:
        prepare(cfg, target)
    except (StorageError, PrepareError, ManifestError, cluster.ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

