"""Ingest ImageNet into Parquet shards + ``manifest.json`` (a Ray Data job): ``python -m pipeline.prepare``.

    python -m pipeline.prepare --src /data/imagenet --dst s3://bucket/imagenet-shards
    python -m pipeline.prepare --src s3://raw/imagenet --dst s3://bucket/shards-512 --max-shorter-side 512

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
import csv
import hashlib
import io
import json
import math
import os
import sys
import time
import typing
import warnings
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, dataclass, field, fields

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from pipeline import cluster, storage
from pipeline.cli import OneLineParser, check_finite, check_http_url
from pipeline.manifest import FORMAT, MANIFEST_NAME, Manifest, ManifestError, Shard, Split, Stats, load_manifest
from pipeline.storage import StorageError
from pipeline.verify import intact

# Bump when convert_image's output for the same input changes: shards written before then are rebuilt.
# 2: 16-bit grey images are scaled to 8 bits instead of clipped (almost white).
CONVERTER_VERSION = 2
SHARD_METADATA_KEY = b"verydeep.shard"
SPLITS = ("train", "val")
MiB = 1 << 20
# Images declaring more pixels are skipped unread (see the module docstring for why 64).
MAX_MEGAPIXELS = 64.0
# Pillow's modes of 16-bit grey ("I" is how older Pillows opened 16-bit PNGs; its range is taken to be 16 bits too).
GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
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
# JPEG bytes do not compress: only the small columns get a codec. No min/max statistics on the image column.
COMPRESSION = {"key": "zstd", "label": "zstd", "wnid": "zstd", "image": "none", "height": "zstd", "width": "zstd"}
STATISTICS_COLUMNS = ["key", "label", "wnid", "height", "width"]

LOC_VAL_SOLUTION = "LOC_val_solution.csv"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_DATA = "ILSVRC2012_devkit_t12/data"
LABEL_FILE_NAMES = {LOC_VAL_SOLUTION, DEVKIT_GROUND_TRUTH, "meta.mat"}


class PrepareError(Exception):
    """A problem with the source data or the options; the message is one line."""


class SkipFile(Exception):
    """A source file that cannot become a training image; the message is the reason."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class PrepareConfig:
    """Options of one ingestion run; the CLI flags are generated from these fields."""

    src: str = field(metadata=_help("source root (local path or s3:// URI) with train/ and optionally val/"))
    dst: str = field(metadata=_help("destination directory (local path or s3:// URI) for the shards and manifest.json"))
    target_shard_mb: float = field(
        default=256.0, metadata=_help("target shard size in MiB of source bytes (object-storage friendly: 100-500)")
    )
    max_rows_per_shard: int | None = field(default=None, metadata=_help("cap on images per shard"))
    row_group_mb: float = field(default=32.0, metadata=_help("target Parquet row-group size in MiB (streaming unit)"))
    max_shorter_side: int | None = field(
        default=None,
        metadata=_help(
            "resize images whose shorter side is larger to this (512 keeps all the paper uses: S, Q <= 512)"
        ),
    )
    jpeg_quality: int = field(default=95, metadata=_help("JPEG quality for re-encoded images (converted or resized)"))
    max_megapixels: float = field(
        default=MAX_MEGAPIXELS,
        metadata=_help(
            "skip images whose header declares more than this many million pixels (width x height), without "
            "decoding them (ImageNet's largest images are well under this)"
        ),
    )
    val_labels: str | None = field(
        default=None, metadata=_help("labels of a flat val/: LOC_val_solution.csv or the devkit's ground-truth txt")
    )
    val_synsets: str | None = field(
        default=None, metadata=_help("with the devkit txt: meta.mat, or a text file of wnids in ILSVRC2012_ID order")
    )
    stats_images: int = field(default=10_000, metadata=_help("training images sampled for the mean RGB and colour PCA"))
    stats_pixels_per_image: int = field(default=1_000, metadata=_help("pixels drawn from each sampled image"))
    s3_endpoint: str | None = field(
        default=None, metadata=_help("S3 endpoint URL (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / AWS)")
    )
    s3_region: str | None = field(default=None, metadata=_help("S3 region (default: AWS_REGION / AWS_DEFAULT_REGION)"))
    num_cpus: int | None = field(
        default=None, metadata=_help("CPUs of a local Ray (default: the cores; ignored when joining a cluster)")
    )
    ray_address: str | None = field(
        default=None,
        metadata=_help(
            "Ray to use: auto = the cluster running on this machine, local = a Ray of this job's own, host:port or "
            "ray://host:port = that cluster (default: RAY_ADDRESS, else a running cluster, else a local Ray)"
        ),
    )
    read_threads: int = field(default=16, metadata=_help("concurrent source reads inside each shard task (I/O bound)"))

    def __post_init__(self) -> None:
        check_finite(self)
        for name in (
            "target_shard_mb",
            "row_group_mb",
            "max_megapixels",
            "stats_images",
            "stats_pixels_per_image",
            "read_threads",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_rows_per_shard", "max_shorter_side", "num_cpus"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        check_http_url("s3_endpoint", self.s3_endpoint)
        if self.ray_address is not None and not cluster.is_address(self.ray_address):
            raise ValueError(f"bad ray_address {self.ray_address!r}: expected {cluster.ADDRESS_FORMS}")

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


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser, one flag per PrepareConfig field."""
    parser = OneLineParser(
        prog="python -m pipeline.prepare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(PrepareConfig)
    for f in fields(PrepareConfig):
        kind = hints[f.name]
        args = typing.get_args(kind)
        base = next(a for a in args if a is not type(None)) if args else kind
        required = f.default is MISSING
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=base,
            required=required,
            default=None if required else f.default,
            help=f.metadata["help"] + ("" if required or f.default is None else f" (default: {f.default})"),
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> PrepareConfig:
    """Parse CLI arguments into a validated PrepareConfig."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return PrepareConfig(**vars(ns))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


# ---------------------------------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class Converted:
    """A stored image: RGB JPEG bytes and their size; ``action`` is unchanged, converted or resized."""

    image: bytes
    height: int
    width: int
    action: str


def shorter_side_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is ``shorter``, aspect ratio kept."""
    scale = shorter / min(width, height)
    if width <= height:
        return shorter, max(1, round(height * scale))
    return max(1, round(width * scale)), shorter


def grey16_to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit grey image as 8-bit grey ("L"), scaled by 255/65535 (Pillow's convert clips it at 255 instead)."""
    values = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def convert_image(
    data: bytes, max_shorter_side: int | None = None, quality: int = 95, max_megapixels: float = MAX_MEGAPIXELS
) -> Converted:
    """Validate one source file and return it as an RGB JPEG; raises SkipFile with the reason if it is unusable.

    An RGB JPEG that needs no resize is returned byte for byte. Everything else (CMYK or grayscale JPEG, 16-bit
    grey, PNG or other formats, images over ``max_shorter_side``) is decoded, converted to RGB and re-encoded.
    An image whose header declares more than ``max_megapixels`` million pixels is skipped before any decoding.
    EXIF orientation is ignored: the pixels keep their stored order (see the module docstring).
    """
    if not data:
        raise SkipFile("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; the size is checked below against ours, before any decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except UnidentifiedImageError:
        raise SkipFile("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise SkipFile(f"declared size too large, not decoded ({' '.join(str(exc).split())})") from None
    except Exception as exc:  # PIL raises many types for broken headers
        raise SkipFile(f"unreadable image header ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    width, height = img.size
    if width * height > max_megapixels * 1e6:
        raise SkipFile(
            f"declared size {width}x{height} ({width * height / 1e6:.1f} megapixels) is over --max-megapixels "
            f"{max_megapixels:g}: not decoded"
        )
    target = None
    if max_shorter_side and min(width, height) > max_shorter_side:
        target = shorter_side_size(width, height, max_shorter_side)
        if img.format == "JPEG":
            # DCT-domain downscale to no less than twice the target, then Lanczos for the rest (as PIL's thumbnail).
            img.draft(None, (2 * target[0], 2 * target[1]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-with-transparency and similar notes are not errors
            img.load()
    except Image.DecompressionBombError as exc:
        raise SkipFile(f"too large to decode safely ({exc})") from None
    except Exception as exc:
        raise SkipFile(
            f"truncated or corrupt image data ({type(exc).__name__}: {' '.join(str(exc).split())})"
        ) from None
    if img.format == "JPEG" and img.mode == "RGB" and target is None:
        return Converted(data, height, width, "unchanged")
    if img.mode in GREY16_MODES:
        img = grey16_to_8bit(img)
    rgb = img.convert("RGB")
    action = "converted"
    if target is not None:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS)
        action = "resized"
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, subsampling=0)  # 4:4:4: no chroma loss on re-encode
    return Converted(out.getvalue(), rgb.height, rgb.width, action)


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def sample_pixels(rgb: np.ndarray, key: str, n: int) -> np.ndarray:
    """``n`` pixels of an (H, W, 3) image drawn with replacement by a generator seeded from ``key``: (n, 3) int64."""
    flat = rgb.reshape(-1, 3)
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return flat[rng.integers(0, flat.shape[0], size=n)].astype(np.int64)


def colour_stats(count: int, total: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, eigenvalues (descending) and eigenvectors (columns) of the RGB covariance from exact integer sums."""
    mean = total / count
    cov = outer / count - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    # Eigenvectors are defined up to sign: fix it (largest component positive) so every run writes the same numbers.
    for j in range(3):
        if eigvec[np.argmax(np.abs(eigvec[:, j])), j] < 0:
            eigvec[:, j] = -eigvec[:, j]
    return mean, eigval, eigvec


# ---------------------------------------------------------------------------------------------------------------------
# Listing and the shard plan


@dataclass(frozen=True)
class SourceFile:
    """One source image: output key, path under the source root, size, label; ``stats``: in the colour sample."""

    key: str
    path: str
    size: int
    label: int
    wnid: str
    stats: bool = False


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


@dataclass
class Listing:
    """What the source holds: classes, candidate files per split, files left out, and how val is labelled."""

    classes: dict[str, int]
    files: dict[str, list[SourceFile]]
    skipped: list[dict[str, str]]
    val_layout: str
    val_labels: str | None  # the labels file of a flat val/ (relative to the source root when found there)
    val_synsets: str | None  # the synset mapping that file needed, if any


def _read_text(uri: str, endpoint: str | None, region: str | None) -> str:
    return storage.read_bytes(uri, endpoint, region).decode("utf-8-sig")


def parse_loc_solution(text: str, where: str) -> dict[str, str]:
    """``LOC_val_solution.csv`` -> {image id: wnid} (the first token of PredictionString is the wnid)."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise PrepareError(f"{where}: expected the header 'ImageId,PredictionString'")
    labels = {}
    for n, row in enumerate(rows, start=2):
        if not row:
            continue
        tokens = row[1].split() if len(row) > 1 else []
        if not tokens:
            raise PrepareError(f"{where} line {n}: no wnid in PredictionString")
        labels[row[0].strip()] = tokens[0]
    return labels


def parse_synsets(data: bytes, where: str) -> list[str]:
    """Wnids in ILSVRC2012_ID order (index 0 = ID 1) from the devkit's meta.mat or a text file of one wnid per line."""
    if where.endswith(".mat"):
        try:
            import scipy.io
        except ImportError:
            raise PrepareError(
                f"reading {where} needs scipy: pip install scipy, or pass a text file of wnids"
            ) from None
        try:
            synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)["synsets"]
            pairs = {
                int(s.ILSVRC2012_ID): str(s.WNID)
                for s in np.atleast_1d(synsets)
                if int(getattr(s, "num_children", 0)) == 0
            }
        except Exception as exc:
            raise PrepareError(f"{where}: not a devkit meta.mat ({type(exc).__name__}: {exc})") from None
        if sorted(pairs) != list(range(1, len(pairs) + 1)):
            raise PrepareError(f"{where}: leaf ILSVRC2012_IDs are not 1..{len(pairs)}")
        return [pairs[i] for i in range(1, len(pairs) + 1)]
    wnids = [line.split()[0] for line in data.decode("utf-8-sig").splitlines() if line.strip()]
    if not wnids:
        raise PrepareError(f"{where}: no wnids")
    return wnids


def parse_ground_truth(text: str, synsets: list[str], where: str) -> dict[str, str]:
    """The devkit's ground truth (one 1-based ILSVRC2012_ID per line, in val image order) -> {image id: wnid}."""
    labels = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            class_id = int(line)
            wnid = synsets[class_id - 1]
            if class_id < 1:
                raise IndexError
        except (ValueError, IndexError):
            raise PrepareError(
                f"{where} line {n}: {line.strip()!r} is not an ILSVRC2012_ID in 1..{len(synsets)}"
            ) from None
        labels[f"ILSVRC2012_val_{n:08d}"] = wnid
    return labels


def _find_val_labels(cfg: PrepareConfig, src: str, present: set[str]) -> tuple[dict[str, str], str, str | None]:
    """Labels of a flat val/, the labels file they came from and the synset mapping it needed (None for the CSV)."""
    ep, rg = cfg.s3_endpoint, cfg.s3_region
    labels_uri, synsets_uri, recorded = None, None, None
    if cfg.val_labels:
        labels_uri = recorded = cfg.val_labels
    else:
        for rel in (LOC_VAL_SOLUTION, f"{DEVKIT_DATA}/{DEVKIT_GROUND_TRUTH}", DEVKIT_GROUND_TRUTH):
            if rel in present:
                labels_uri, recorded = storage.join(src, rel), rel
                break
    if labels_uri is None:
        raise PrepareError(
            "val/ holds images outside class folders and no labels file was found: "
            f"pass --val-labels ({LOC_VAL_SOLUTION} or {DEVKIT_GROUND_TRUTH})"
        )
    text = _read_text(labels_uri, ep, rg)
    if text.lstrip().startswith("ImageId"):
        return parse_loc_solution(text, labels_uri), recorded, None
    if cfg.val_synsets:
        synsets_uri = cfg.val_synsets
    else:
        beside = labels_uri.rsplit("/", 1)[0] + "/meta.mat" if "/" in labels_uri else "meta.mat"
        for candidate in (beside, storage.join(src, DEVKIT_DATA, "meta.mat")):
            if storage.exists(candidate, ep, rg):
                synsets_uri = candidate
                break
    if synsets_uri is None:
        raise PrepareError(
            f"{labels_uri} holds ILSVRC2012_IDs: pass --val-synsets (meta.mat, or a text file of wnids in ID order)"
        )
    synsets = parse_synsets(storage.read_bytes(synsets_uri, ep, rg), synsets_uri)
    recorded_synsets = synsets_uri[len(src) + 1 :] if synsets_uri.startswith(src + "/") else synsets_uri
    return parse_ground_truth(text, synsets, labels_uri), recorded, recorded_synsets


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


def scan_source(cfg: PrepareConfig, src: str) -> Listing:
    """List the source tree: classes from train/, labelled candidate files per split, and the files left out."""
    entries = storage.walk(src, cfg.s3_endpoint, cfg.s3_region)
    present = {path for path, _ in entries}
    wnids = sorted({p.split("/")[1] for p in present if p.startswith("train/") and p.count("/") == 2})
    if not wnids:
        raise PrepareError(f"no class folders under {storage.join(src, 'train')}: expected train/<wnid>/<image>")
    classes = {w: i for i, w in enumerate(wnids)}
    files: dict[str, list[SourceFile]] = {s: [] for s in SPLITS}
    skipped: list[dict[str, str]] = []
    flat_val = [
        (p, n) for p, n in entries if p.startswith("val/") and p.count("/") == 1 and p[4:] not in LABEL_FILE_NAMES
    ]
    val_labels, val_labels_name, val_synsets_name = {}, None, None
    if flat_val:
        val_labels, val_labels_name, val_synsets_name = _find_val_labels(cfg, src, present)
    for split in SPLITS:  # pyarrow's listing leaves these out silently: name them, as every other skipped file
        skipped += [
            {"path": f"{split}/{rel}", "reason": reason}
            for rel, reason in storage.broken_links(storage.join(src, split))
        ]
    seen: set[str] = set()
    for path, size in entries:
        split, _, rest = path.partition("/")
        if split not in SPLITS or not rest:
            continue  # label files, devkit, test/ and anything else beside the splits
        parts = rest.split("/")
        if len(parts) == 2:
            wnid, name = parts
        elif len(parts) == 1 and split == "val":
            name = parts[0]
            if name in LABEL_FILE_NAMES:
                continue
            wnid = val_labels.get(_stem(name))
            if wnid is None:
                skipped.append({"path": path, "reason": f"no label for this image in {val_labels_name}"})
                continue
        else:
            skipped.append({"path": path, "reason": f"not in a class folder ({split}/<wnid>/<image>)"})
            continue
        if wnid not in classes:
            skipped.append({"path": path, "reason": f"class {wnid} is not among the training classes"})
            continue
        key = f"{split}/{wnid}/{_stem(name)}"
        if key in seen:
            skipped.append({"path": path, "reason": f"duplicate key {key} (same name, other extension)"})
            continue
        seen.add(key)
        files[split].append(SourceFile(key, path, size, classes[wnid], wnid))
    has_folders = any(f.path.count("/") == 2 for f in files["val"])
    layout = {(False, False): "none", (True, False): "folders", (False, True): "flat", (True, True): "mixed"}
    return Listing(classes, files, skipped, layout[(has_folders, bool(flat_val))], val_labels_name, val_synsets_name)


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
        "files": [[f.key, f.path, f.size, f.label, f.wnid, f.stats] for f in plan.files],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# One shard (runs inside a Ray Data task)


def _read_footer(uri: str, endpoint: str | None, region: str | None) -> dict | None:
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


def _convert_one(src: str, f: SourceFile, spec: dict) -> tuple[SourceFile, Converted | str]:
    data = storage.read_bytes(storage.join(src, f.path), spec["endpoint"], spec["region"])
    try:
        return f, convert_image(data, spec["max_shorter_side"], spec["jpeg_quality"], spec["max_megapixels"])
    except SkipFile as exc:
        return f, str(exc)


def build_shard(spec: dict) -> dict:
    """Write one planned shard (or keep it if a shard of the same fingerprint is already there); returns its record."""
    ep, rg = spec["endpoint"], spec["region"]
    uri = storage.join(spec["dst"], spec["name"])
    record = _read_footer(uri, ep, rg) if storage.exists(uri, ep, rg) else None
    if record is not None and record.get("fingerprint") == spec["fingerprint"]:
        # Kept only if every page still matches its checksum: a damaged shard is rewritten like a missing one.
        data = storage.read_bytes(uri, ep, rg)
        if intact(data, uri):
            sha = hashlib.sha256(data).hexdigest()
            return {**record, "name": spec["name"], "bytes": len(data), "sha256": sha, "status": "kept"}

    files = [SourceFile(*f) for f in spec["files"]]
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    skipped, actions = [], {"unchanged": 0, "converted": 0, "resized": 0}
    total, outer, pixels, images = np.zeros(3, np.int64), np.zeros((3, 3), np.int64), 0, 0
    with ThreadPoolExecutor(spec["read_threads"]) as pool:
        # map keeps the planned order, so the shard's bytes do not depend on which read finished first.
        for f, result in pool.map(lambda f: _convert_one(spec["src"], f, spec), files):
            if isinstance(result, str):
                skipped.append({"path": f.path, "reason": result})
                continue
            actions[result.action] += 1
            row = (f.key, f.label, f.wnid, result.image, result.height, result.width)
            for name, value in zip(SCHEMA.names, row, strict=True):
                columns[name].append(value)
            if f.stats:
                px = sample_pixels(decode_rgb(result.image), f.key, spec["stats_pixels_per_image"])
                total += px.sum(axis=0)
                outer += px.T @ px
                pixels += len(px)
                images += 1
    record = {
        "fingerprint": spec["fingerprint"],
        "skipped": skipped,
        "stats": {"images": images, "pixels": pixels, "sum": total.tolist(), "outer": outer.tolist()},
        **actions,
    }
    schema = SCHEMA.with_metadata({SHARD_METADATA_KEY: json.dumps(record, sort_keys=True).encode()})
    table = pa.Table.from_pydict(columns, schema=schema)
    image_bytes = sum(len(b) for b in columns["image"])
    rows_per_group = max(1, int(spec["row_group_bytes"] * table.num_rows / image_bytes)) if image_bytes else 1
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
        "name": spec["name"],
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "status": "written",
    }


def _shard_task(row: dict) -> dict:
    # Known failures travel back as data: Ray Data re-raises a task's exception wrapped, without the original.
    try:
        return {"result": json.dumps(build_shard(json.loads(row["spec"])))}
    except (StorageError, PrepareError) as exc:
        return {"result": json.dumps({"error": type(exc).__name__, "message": str(exc)})}


# ---------------------------------------------------------------------------------------------------------------------
# The job


def _run_shards(specs: list[dict], memory_per_task: int) -> Iterator[dict]:
    # One Ray Data row per planned shard: the task reads, validates and converts its files and writes its shard.
    # Compared with a per-file map_batches followed by a groupby (or write_parquet), this moves no image bytes
    # through the object store, names every file exactly, commits each shard atomically in the task that made it,
    # and lets a rerun skip a finished shard without reading its source files.
    import ray

    ds = ray.data.from_items([{"spec": json.dumps(s)} for s in specs], override_num_blocks=len(specs))
    ds = ds.map(_shard_task, num_cpus=1, memory=memory_per_task)
    for row in ds.iter_rows():
        result = json.loads(row["result"])
        if "error" in result:
            raise (StorageError if result["error"] == "StorageError" else PrepareError)(result["message"])
        yield result


def _stray_shards(dst: str, planned: set[str], endpoint: str | None, region: str | None) -> list[str]:
    """Shard files under dst's split folders that the current plan does not name (left by a run with other options)."""
    stray = []
    for split in SPLITS:
        folder = storage.join(dst, split)
        if storage.exists(folder, endpoint, region):
            names = storage.listdir(folder, endpoint, region)
            stray += [f"{split}/{n}" for n in names if n.endswith(".parquet") and f"{split}/{n}" not in planned]
    return stray


def _normalise(uri: str) -> str:
    return uri.rstrip("/") if "://" in uri else os.path.abspath(uri)


def prepare(cfg: PrepareConfig) -> Manifest:
    """Run the ingestion job end to end and return the manifest it wrote (or found already complete)."""
    start = time.monotonic()
    ep, rg = cfg.s3_endpoint, cfg.s3_region
    cluster.check_job_output("--dst", cfg.dst, "an absolute path on shared storage or s3://bucket/prefix")
    src, dst = _normalise(cfg.src), _normalise(cfg.dst)
    # Storage is checked before Ray starts, so that a bad bucket or key ends in one line, not a cluster's worth.
    storage.check_access(src, create=False, endpoint=ep, region=rg)
    if not storage.is_s3(dst) and not storage.is_s3(src) and (dst + "/").startswith(src + "/"):
        raise PrepareError(f"destination {dst} is inside the source {src}")
    storage.check_access(dst, create=True, endpoint=ep, region=rg)

    listing = scan_source(cfg, src)
    plans = [
        p
        for split in SPLITS
        if listing.files[split]
        for p in plan_shards(
            listing.files[split],
            split,
            cfg.target_shard_bytes,
            cfg.max_rows_per_shard,
            cfg.stats_images if split == "train" else 0,
        )
    ]
    fingerprints = {p.name: shard_fingerprint(p, cfg.content_options) for p in plans}
    plan_doc = {"classes": listing.classes, "shards": fingerprints, "skipped": listing.skipped}
    options = {name: getattr(cfg, name) for name in _RECORDED_OPTIONS} | {
        "src": src,
        "val_layout": listing.val_layout,
        "val_labels": listing.val_labels,
        "val_synsets": listing.val_synsets,
        "converter_version": CONVERTER_VERSION,
        "plan_sha256": hashlib.sha256(json.dumps(plan_doc, sort_keys=True).encode()).hexdigest(),
    }
    manifest_uri = storage.join(dst, MANIFEST_NAME)
    if storage.exists(manifest_uri, ep, rg):
        try:
            old_plan = load_manifest(manifest_uri, ep, rg).options.get("plan_sha256")
        except ManifestError:
            old_plan = None
        if old_plan != options["plan_sha256"]:
            # A different plan will overwrite shards the old manifest lists: it must not outlive that.
            storage.remove(manifest_uri, ep, rg)
    storage.remove_stale_temps(dst)
    n_files = {s: len(listing.files[s]) for s in SPLITS}
    print(
        f"planned {len(plans)} shards: " + ", ".join(f"{s} {n_files[s]} files" for s in SPLITS if n_files[s]),
        f"({len(listing.skipped)} left out by the listing); classes {len(listing.classes)}",
        flush=True,
    )

    specs = [
        {
            "name": p.name,
            "fingerprint": fingerprints[p.name],
            "files": [[f.key, f.path, f.size, f.label, f.wnid, f.stats] for f in p.files],
            "src": src,
            "dst": dst,
            "endpoint": ep,
            "region": rg,
            "read_threads": cfg.read_threads,
            "row_group_bytes": int(cfg.row_group_mb * MiB),
            **cfg.content_options,
        }
        for p in plans
    ]
    cluster.connect(cfg.ray_address, local_cpus=cfg.num_cpus or os.cpu_count() or 1)
    results: dict[str, dict] = {}
    memory = 3 * max(cfg.target_shard_bytes, 64 * MiB)  # source bytes + table + encoded Parquet, held at once
    for r in _run_shards(specs, memory):
        results[r["name"]] = r
        print(
            f"[{len(results)}/{len(specs)}] {r['name']}: {r['rows']} rows, {r['bytes'] / MiB:.1f} MiB, {r['status']}",
            flush=True,
        )

    splits = {}
    for split in SPLITS:
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
    manifest = Manifest(dst, listing.classes, splits, stats, tuple(skipped), options)
    text = manifest.to_json().encode()
    if not (storage.exists(manifest_uri, ep, rg) and storage.read_bytes(manifest_uri, ep, rg) == text):
        storage.write_bytes_atomic(manifest_uri, text, ep, rg)  # last: it lists only committed shards

    for s in skipped[:20]:
        print(f"skipped {s['path']}: {s['reason']}", flush=True)
    if len(skipped) > 20:
        print(f"... and {len(skipped) - 20} more skipped files (all listed in {manifest_uri})", flush=True)
    stray = _stray_shards(dst, {p.name for p in plans}, ep, rg)
    if stray:
        print(
            f"note: {len(stray)} Parquet files under {dst} are not in the manifest (an earlier plan), e.g. {stray[0]}",
            flush=True,
        )
    written = sum(r["status"] == "written" for r in results.values())
    converted = sum(r.get("converted", 0) for r in results.values())
    resized = sum(r.get("resized", 0) for r in results.values())
    total_bytes = sum(r["bytes"] for r in results.values())
    print(
        "done: "
        + ", ".join(f"{name} {sp.count} images" for name, sp in splits.items())
        + f"; skipped {len(skipped)} files; {len(results)} shards ({written} written, {len(results) - written} kept),"
        f" {total_bytes / MiB:.1f} MiB; converted {converted} to RGB, resized {resized};"
        f" {time.monotonic() - start:.1f} s; manifest {manifest_uri}",
        flush=True,
    )
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run the job; known failures print one ``error:`` line and return 2."""
    cfg = parse_args(argv)
    try:
        prepare(cfg)
    except (StorageError, PrepareError, ManifestError, cluster.ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
