"""The shards ``pipeline.prepare`` writes: their schema, the plan that packs source files into them, and one shard's
writing (the task each shard is, with its record in its own Parquet footer).

A shard is named by its plan (``train/train-00000-of-00543.parquet``) and identified by its fingerprint, a digest of
everything that decides its bytes; a rerun keeps a shard whose footer carries the same fingerprint and whose pages
all verify, so the plan must be a pure function of the listing and the options.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import typing
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.convert import CONVERTER_VERSION, Converted, SkipFile, convert_image, decode_rgb, sample_pixels
from pipeline.manifest import FORMAT
from pipeline.verify import intact

MiB = 1 << 20
SPLITS = ("train", "val")  # one folder of shards each under the destination
SHARD_METADATA_KEY = b"verydeep.shard"
# Crash tests set this to slow each shard down before its commit, so that a kill lands mid-run.
COMMIT_DELAY_ENV = "VERYDEEP_PREPARE_COMMIT_DELAY_S"

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("label", pa.int32()),
        ("wnid", pa.string()),
        ("image", pa.binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
    ]
)
# What training and evaluation read of a shard (wnid stays behind: the manifest maps labels to wnids).
COLUMNS = ["key", "label", "height", "width", "image"]
# Multi-label data (VOC) adds one column: a code per class, 1 present, 0 difficult only, -1 absent (pipeline.targets).
TARGETS_FIELD = pa.field("targets", pa.list_(pa.int8()))
# JPEG bytes do not compress: only the small columns get a codec. No min/max statistics on the image column.
COMPRESSION = {"key": "zstd", "label": "zstd", "wnid": "zstd", "image": "none", "height": "zstd", "width": "zstd"}
STATISTICS_COLUMNS = ["key", "label", "wnid", "height", "width"]


@dataclass(frozen=True)
class SourceFile:
    """One source image: output key, path under the source root, size, label; ``stats``: in the colour sample."""

    key: str
    path: str
    size: int
    label: int
    wnid: str
    stats: bool = False
    targets: tuple[int, ...] | None = None  # multi-label data: a code per class (pipeline.targets)

    def row(self) -> list:
        """The file as its shard's fingerprint lists it; per-class codes only where there are some."""
        row = [self.key, self.path, self.size, self.label, self.wnid, self.stats]
        return row + [list(self.targets)] if self.targets is not None else row


@dataclass(frozen=True)
class ShardPlan:
    """One output shard: its split, index, the split's shard count and its files in stored order."""

    split: str
    index: int
    count: int
    files: tuple[SourceFile, ...]

    @property
    def name(self) -> str:
        """Path of the shard relative to the destination root."""
        return f"{self.split}/{self.split}-{self.index:05d}-of-{self.count:05d}.parquet"


@dataclass(frozen=True)
class ShardSpec:
    """Everything one shard task needs: the shard's name, fingerprint and files, where to read and write, the options
    that shape its bytes (``PrepareConfig.content_options``) and how many source reads it may run at once."""

    name: str
    fingerprint: str
    files: tuple[SourceFile, ...]
    src: str
    dst: str
    endpoint: str | None
    region: str | None
    read_threads: int
    row_group_bytes: int
    max_shorter_side: int | None
    jpeg_quality: int
    max_megapixels: float
    stats_pixels_per_image: int


def order_key(key: str) -> str:
    """Stored order: a fixed pseudo-random order of keys, so every shard mixes all classes."""
    return hashlib.sha1(key.encode()).hexdigest()


def plan_shards(
    files: Sequence[SourceFile], split: str, target_bytes: int, max_rows: int | None = None, stats_images: int = 0
) -> list[ShardPlan]:
    """Pack files, in ``order_key`` order, greedily into shards of about ``target_bytes`` source bytes.

    A pure function of the listing and the options, so that a rerun plans the same shards. For the training
    split, every k-th file (k = ceil(n / stats_images)) is marked for the colour-statistics sample.
    """
    ordered = sorted(files, key=lambda f: (order_key(f.key), f.key))
    if stats_images and ordered:
        step = math.ceil(len(ordered) / stats_images)
        ordered = [SourceFile(**{**f.__dict__, "stats": i % step == 0}) for i, f in enumerate(ordered)]
    groups: list[list[SourceFile]] = []
    current: list[SourceFile] = []
    current_bytes = 0
    for f in ordered:
        full = current and (
            current_bytes + f.size > target_bytes or (max_rows is not None and len(current) >= max_rows)
        )
        if full:
            groups.append(current)
            current, current_bytes = [], 0
        current.append(f)
        current_bytes += f.size
    if current:
        groups.append(current)
    return [ShardPlan(split, i, len(groups), tuple(g)) for i, g in enumerate(groups)]


def shard_fingerprint(plan: ShardPlan, content_options: dict[str, typing.Any]) -> str:
    """Digest of everything that decides a shard's bytes: its name, its files (as listed) and the content options."""
    doc = {
        "format": FORMAT,
        "converter": CONVERTER_VERSION,
        "options": content_options,
        "name": plan.name,
        "files": [f.row() for f in plan.files],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def read_footer(uri: str, endpoint: str | None, region: str | None) -> dict | None:
    """The shard's own record (fingerprint, skipped files, stats sums) from its Parquet footer, or None."""
    fs, path = storage.resolve(uri, endpoint, region)
    try:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            record = json.loads((parquet.schema_arrow.metadata or {})[SHARD_METADATA_KEY])
            record["rows"] = parquet.metadata.num_rows
        return record
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None  # absent, not Parquet or not ours: the shard is (re)written


def _convert_one(spec: ShardSpec, f: SourceFile) -> tuple[SourceFile, Converted | str]:
    data = storage.read_bytes(storage.join(spec.src, f.path), spec.endpoint, spec.region)
    try:
        return f, convert_image(data, spec.max_shorter_side, spec.jpeg_quality, spec.max_megapixels)
    except SkipFile as exc:
        return f, str(exc)


def build_shard(spec: ShardSpec) -> dict:
    """Write one planned shard (or keep it if a shard of the same fingerprint is already there); returns its record."""
    ep, rg = spec.endpoint, spec.region
    uri = storage.join(spec.dst, spec.name)
    record = read_footer(uri, ep, rg) if storage.exists(uri, ep, rg) else None
    if record is not None and record.get("fingerprint") == spec.fingerprint:
        # Kept only if every page still matches its checksum: a damaged shard is rewritten like a missing one.
        data = storage.read_bytes(uri, ep, rg)
        if intact(data, uri):
            sha = hashlib.sha256(data).hexdigest()
            return {**record, "name": spec.name, "bytes": len(data), "sha256": sha, "status": "kept"}

    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    skipped, actions = [], {"unchanged": 0, "converted": 0, "resized": 0}
    total, outer, pixels, images = np.zeros(3, np.int64), np.zeros((3, 3), np.int64), 0, 0
    with ThreadPoolExecutor(spec.read_threads) as pool:
        # map keeps the planned order, so the shard's bytes do not depend on which read finished first.
        for f, result in pool.map(lambda f: _convert_one(spec, f), spec.files):
            if isinstance(result, str):
                skipped.append({"path": f.path, "reason": result})
                continue
            actions[result.action] += 1
            row = (f.key, f.label, f.wnid, result.image, result.height, result.width)
            for name, value in zip(SCHEMA.names, row, strict=True):
                columns[name].append(value)
            if f.targets is not None:
                columns.setdefault(TARGETS_FIELD.name, []).append(list(f.targets))
            if f.stats:
                px = sample_pixels(decode_rgb(result.image), f.key, spec.stats_pixels_per_image)
                total += px.sum(axis=0)
                outer += px.T @ px
                pixels += len(px)
                images += 1
    record = {
        "fingerprint": spec.fingerprint,
        "skipped": skipped,
        "stats": {"images": images, "pixels": pixels, "sum": total.tolist(), "outer": outer.tolist()},
        **actions,
    }
    schema = SCHEMA.append(TARGETS_FIELD) if TARGETS_FIELD.name in columns else SCHEMA
    schema = schema.with_metadata({SHARD_METADATA_KEY: json.dumps(record, sort_keys=True).encode()})
    table = pa.Table.from_pydict(columns, schema=schema)
    image_bytes = sum(len(b) for b in columns["image"])
    rows_per_group = max(1, int(spec.row_group_bytes * table.num_rows / image_bytes)) if image_bytes else 1
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=rows_per_group,
        compression=COMPRESSION,
        use_dictionary=["wnid"],
        write_statistics=STATISTICS_COLUMNS,
        write_page_checksum=True,  # a CRC-32 per page, verified by every read (pipeline.verify)
    )
    data = sink.getvalue().to_pybytes()
    delay = float(os.environ.get(COMMIT_DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    storage.write_bytes_atomic(uri, data, ep, rg)
    return {
        **record,
        "rows": table.num_rows,
        "name": spec.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "status": "written",
    }


def stray_shards(dst: str, planned: set[str], endpoint: str | None, region: str | None,
                 splits: Sequence[str] = SPLITS) -> list[str]:
    """Shard files under dst's split folders that the current plan does not name (left by a run with other options)."""
    stray = []
    for split in splits:
        folder = storage.join(dst, split)
        if storage.exists(folder, endpoint, region):
            names = storage.listdir(folder, endpoint, region)
            stray += [f"{split}/{n}" for n in names if n.endswith(".parquet") and f"{split}/{n}" not in planned]
    return stray
