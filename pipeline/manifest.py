"""The shard manifest (``manifest.json``): what ``pipeline.prepare`` wrote and what every reader needs.

Schema (``format`` = ``verydeep-shards/2``)::

    {"format": "verydeep-shards/2",
     "classes": {wnid: index},                       # sorted wnids -> 0..N-1, as torchvision's ImageFolder
     "splits": {"train": {"count": int,               # rows over all shards of the split
                          "shards": [{"path": str,     # relative to the manifest's directory
                                      "rows": int, "bytes": int, "sha256": str}]},
                "val": {...}},
     "stats": {"mean_rgb": [r, g, b],                 # training pixels, 0-255 scale
               "eigval": [l1, l2, l3],                # RGB covariance eigenvalues, descending
               "eigvec": [[...], [...], [...]],       # rows of a 3x3 matrix; column i goes with eigval[i]
               "sample_images": int, "sample_pixels": int},
     "skipped": [{"path": str, "reason": str}],       # source files left out, relative to the source root
     "options": {...}}                                # the ingestion options that shaped the shards

Every shard holds the columns ``key`` (string, unique), ``label`` (int32), ``wnid`` (string), ``image`` (binary,
an RGB JPEG), ``height`` and ``width`` (int32, of the stored image).

Format 2 shards carry a CRC-32 in every Parquet page header, which every read verifies (``pipeline.verify``). Format 1
shards have none, so a damaged page would go unnoticed: their manifests are refused with a line saying to re-run
``pipeline.prepare``, which rewrites them (the format is part of each shard's fingerprint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import storage

FORMAT = "verydeep-shards/2"
# Formats this code once wrote and no longer reads: shards without page checksums.
UNVERIFIABLE_FORMATS = ("verydeep-shards/1",)
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A missing or malformed manifest; the message is one line."""


@dataclass(frozen=True)
class Shard:
    """One Parquet shard as listed in the manifest."""

    path: str  # relative to the manifest's directory
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Split:
    """One split (train or val): its row count and its shards in order."""

    count: int
    shards: tuple[Shard, ...]


@dataclass(frozen=True)
class Stats:
    """Colour statistics of the training set on the 0-255 scale (mean subtraction, AlexNet's PCA colour shift)."""

    mean_rgb: tuple[float, float, float]
    eigval: tuple[float, float, float]  # descending
    eigvec: tuple[tuple[float, ...], ...]  # 3x3 rows; column i is the eigenvector of eigval[i]
    sample_images: int
    sample_pixels: int


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest; ``root`` is the URI of the directory that holds it (shard paths are relative to it)."""

    root: str
    classes: dict[str, int]
    splits: dict[str, Split]
    stats: Stats
    skipped: tuple[dict[str, str], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def wnids(self) -> list[str]:
        """Wnids in label order (``wnids[label]``)."""
        return sorted(self.classes, key=self.classes.__getitem__)

    @property
    def mean_rgb(self) -> np.ndarray:
        """Mean training RGB, shape (3,), 0-255 scale."""
        return np.asarray(self.stats.mean_rgb, dtype=np.float64)

    @property
    def eigval(self) -> np.ndarray:
        """RGB covariance eigenvalues, shape (3,), descending."""
        return np.asarray(self.stats.eigval, dtype=np.float64)

    @property
    def eigvec(self) -> np.ndarray:
        """RGB covariance eigenvectors, shape (3, 3); column i goes with ``eigval[i]``."""
        return np.asarray(self.stats.eigvec, dtype=np.float64)

    def split(self, name: str) -> Split:
        """The named split; a one-line ManifestError names the ones present if it is absent."""
        if name not in self.splits:
            raise ManifestError(
                f"manifest at {self.root} has no split {name!r} (has: {', '.join(self.splits) or 'none'})"
            )
        return self.splits[name]

    def shard_uris(self, split: str) -> list[str]:
        """Absolute URIs of the split's shards, in order."""
        return [storage.join(self.root, s.path) for s in self.split(split).shards]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, keys in schema order."""
        return {
            "format": FORMAT,
            "classes": dict(self.classes),
            "splits": {
                name: {
                    "count": sp.count,
                    "shards": [
                        {"path": s.path, "rows": s.rows, "bytes": s.bytes, "sha256": s.sha256} for s in sp.shards
                    ],
                }
                for name, sp in self.splits.items()
            },
            "stats": {
                "mean_rgb": list(self.stats.mean_rgb),
                "eigval": list(self.stats.eigval),
                "eigvec": [list(row) for row in self.stats.eigvec],
                "sample_images": self.stats.sample_images,
                "sample_pixels": self.stats.sample_pixels,
            },
            "skipped": [dict(s) for s in self.skipped],
            "options": dict(self.options),
        }

    def to_json(self) -> str:
        """Serialised form; equal manifests give equal bytes."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _floats(value: Any, n: int, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != n or not all(isinstance(v, (int, float)) for v in value):
        raise ManifestError(f"stats.{what} must be a list of {n} numbers")
    return tuple(float(v) for v in value)


def from_dict(doc: Any, root: str) -> Manifest:
    """Validate a parsed manifest document and build a Manifest (``root``: the directory URI of its shards)."""
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    if doc.get("format") in UNVERIFIABLE_FORMATS:
        raise ManifestError(f"manifest format is {doc['format']!r}: its shards were written without page checksums, "
                            f"so damage cannot be detected; re-run pipeline.prepare with the same --src and --dst to "
                            f"rewrite them as {FORMAT!r}")
    if doc.get("format") != FORMAT:
        raise ManifestError(f"manifest format is {doc.get('format')!r}, expected {FORMAT!r}")
    for key in ("classes", "splits", "stats"):
        if key not in doc:
            raise ManifestError(f"manifest has no {key!r}")
    classes = doc["classes"]
    if not isinstance(classes, dict) or sorted(classes.values()) != list(range(len(classes))):
        raise ManifestError("manifest 'classes' must map wnids to the labels 0..N-1")
    try:
        splits = {
            name: Split(
                count=int(sp["count"]),
                shards=tuple(
                    Shard(str(s["path"]), int(s["rows"]), int(s["bytes"]), str(s["sha256"])) for s in sp["shards"]
                ),
            )
            for name, sp in doc["splits"].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(f"manifest 'splits' is malformed ({type(exc).__name__}: {exc})") from None
    for name, sp in splits.items():
        if sp.count != sum(s.rows for s in sp.shards):
            raise ManifestError(f"manifest split {name!r}: count {sp.count} != sum of shard rows")
    st = doc["stats"]
    if not isinstance(st, dict):
        raise ManifestError("manifest 'stats' is not an object")
    eigvec = st.get("eigvec")
    if not isinstance(eigvec, list) or len(eigvec) != 3:
        raise ManifestError("stats.eigvec must be a 3x3 list of rows")
    stats = Stats(
        mean_rgb=_floats(st.get("mean_rgb"), 3, "mean_rgb"),  # type: ignore[arg-type]
        eigval=_floats(st.get("eigval"), 3, "eigval"),  # type: ignore[arg-type]
        eigvec=tuple(_floats(row, 3, "eigvec") for row in eigvec),
        sample_images=int(st.get("sample_images", 0)),
        sample_pixels=int(st.get("sample_pixels", 0)),
    )
    skipped = tuple({"path": str(s["path"]), "reason": str(s["reason"])} for s in doc.get("skipped", []))
    return Manifest(
        root=root,
        classes=dict(classes),
        splits=splits,
        stats=stats,
        skipped=skipped,
        options=dict(doc.get("options", {})),
    )


def manifest_uri(uri: str) -> str:
    """The manifest file's URI, given either it or the directory that holds it."""
    return uri if uri.rstrip("/").endswith(".json") else storage.join(uri, MANIFEST_NAME)


def load_manifest(uri: str, endpoint: str | None = None, region: str | None = None) -> Manifest:
    """Load and validate a manifest from its file URI or its directory (local path or ``s3://``)."""
    path = manifest_uri(uri)
    root = path.rstrip("/").rsplit("/", 1)[0] if "/" in path else "."
    try:
        raw = storage.read_bytes(path, endpoint, region)
    except storage.StorageError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {path} is not valid JSON: {exc}") from None
    try:
        return from_dict(doc, root)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
