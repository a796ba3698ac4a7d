"""The store of per-image posteriors: Parquet files keyed by (data, model id, Q, view, shard), and what is missing.

Layout under the results directory (local or s3://)::

    posteriors/<data id>/<model id>/q<Q>/<view>/<shard>.parquet    columns key, label, probs (C float32)

``data id`` names the split and hashes its shards' checksums, what storage reports of each shard now (size, and ETag
or modification time) and any image limit; ``model id`` hashes the net's card and weights: a posterior is reused only
for the same images and the same net. Views are ``dense``, ``dense_noflip``, ``multicrop`` and ``multicrop_noflip``
(``evaluation.methods.views_of``). One file per image shard, written when that shard is done, so an
interrupted sweep keeps everything it finished and a rerun computes only the missing (net, Q, shard, view) files.
Multi-scale, multi-crop & dense and fusion results are averages of stored files: no net runs again for them.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.manifest import Manifest
from pipeline.verify import ShardFacts, inspect_shards

ROOT = "posteriors"
KEEP_LOADED = 2  # posteriors the report's loader keeps (PosteriorStore.loader)


@dataclass(frozen=True)
class Posteriors:
    """Posteriors of some images: keys (sorted), labels, probs (N, C) float32."""

    keys: np.ndarray
    labels: np.ndarray
    probs: np.ndarray

    def sorted(self) -> Posteriors:
        """The same rows in key order (the order every combination aligns on)."""
        order = np.argsort(self.keys, kind="stable")
        return Posteriors(self.keys[order], self.labels[order], self.probs[order])


def data_id(manifest: Manifest, split: str, limit: int | None = None, observed: Sequence[ShardFacts] | None = None,
            endpoint: str | None = None) -> str:
    """The split's name and a hash of its shards (paths, checksums, what storage says of each now) and the image
    limit; ``observed``: the split's ``pipeline.verify.inspect_shards`` facts, read now when not given."""
    # The manifest's SHA-256s say what prepare wrote, not what is stored now: a shard rewritten or damaged in place
    # keeps its manifest entry. Storage's own facts about each object change whenever it is written: its size and its
    # ETag on S3 (the content's MD5 for a single upload), or its modification time on a filesystem. Hashing the bytes
    # instead would re-read the whole split on every sweep; the footer alone misses a change inside a data page.
    if observed is None:
        observed = inspect_shards(manifest, [split], endpoint)
    digest = hashlib.sha256(repr(limit).encode())
    for shard, facts in zip(manifest.split(split).shards, observed, strict=True):
        digest.update(f"{shard.path}:{shard.sha256}:{shard.rows}:{facts.size}:{facts.version}".encode())
    return f"{split}-{digest.hexdigest()[:12]}"


def shard_limits(row_counts: list[int], limit: int | None) -> list[int]:
    """Rows to take from each shard so that the first ``limit`` images of the split (all when None) are taken."""
    if limit is None:
        return list(row_counts)
    out, left = [], limit
    for rows in row_counts:
        out.append(min(rows, left))
        left -= out[-1]
    return out


def to_parquet(keys: Iterable[str], labels: np.ndarray, probs: np.ndarray) -> bytes:
    """One shard's posteriors of one view as Parquet bytes."""
    probs = np.ascontiguousarray(probs, np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), probs.shape[1])
    table = pa.table({"key": pa.array(list(keys), pa.string()), "label": pa.array(labels, pa.int32()),
                      "probs": column})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def from_parquet(data: bytes) -> Posteriors:
    """Inverse of ``to_parquet``."""
    table = pq.read_table(io.BytesIO(data))
    probs = table.column("probs").combine_chunks()
    width = probs.type.list_size
    values = probs.values.to_numpy(zero_copy_only=False).reshape(-1, width)
    return Posteriors(table.column("key").to_numpy(zero_copy_only=False).astype(str),
                      table.column("label").to_numpy(), values)


class PosteriorStore:
    """Per-image posteriors of one split under a results directory."""

    def __init__(self, out: str, data: str, endpoint: str | None = None) -> None:
        self.root, self.endpoint = storage.join(out, ROOT, data), endpoint
        self._present: set[str] | None = None

    @staticmethod
    def relpath(model_id: str, q: int, view: str, shard: int) -> str:
        """A file's path under the store's root."""
        return f"{model_id}/q{q}/{view}/{shard:05d}.parquet"

    def present(self) -> set[str]:
        """Relative paths of the files already stored (listed once, then kept up to date by ``write``)."""
        if self._present is None:
            try:
                self._present = {path for path, _ in storage.walk(self.root, self.endpoint)}
            except storage.StorageError:
                if storage.exists(self.root, self.endpoint):
                    raise
                self._present = set()
        return self._present

    def missing(self, model_id: str, q: int, views: Iterable[str], shards: Iterable[int]) -> dict[int, tuple[str, ...]]:
        """For each of ``shards`` that lacks some of ``views`` at (model, Q): the views it lacks."""
        have, out, views = self.present(), {}, tuple(views)
        for shard in shards:
            lack = tuple(v for v in views if self.relpath(model_id, q, v, shard) not in have)
            if lack:
                out[shard] = lack
        return out

    def write(self, model_id: str, q: int, view: str, shard: int, keys: Iterable[str], labels: np.ndarray,
              probs: np.ndarray) -> None:
        """Store one shard's posteriors of one view (atomically: a reader sees all of the file or none)."""
        rel = self.relpath(model_id, q, view, shard)
        storage.write_bytes_atomic(storage.join(self.root, rel), to_parquet(keys, labels, probs), self.endpoint)
        self.present().add(rel)

    def loader(self, shards: Sequence[int], keep: int = KEEP_LOADED) -> Callable[[str, int, str], Posteriors]:
        """``(model id, Q, view) -> posteriors`` of ``shards`` for the report, the last ``keep`` loads kept.

        A few, not all: the report asks for a (net, Q)'s dense and multi-crop views twice in a row (each alone,
        then together), but a full sweep's views are 54 tables of 200 MB (50,000 images x 1,000 classes).
        """
        return functools.lru_cache(maxsize=keep)(lambda model_id, q, view: self.read(model_id, q, view, shards))

    def read(self, model_id: str, q: int, view: str, shards: Iterable[int]) -> Posteriors:
        """The given shards of one (model, Q, view), rows in key order."""
        parts = [from_parquet(storage.read_bytes(storage.join(self.root, self.relpath(model_id, q, view, s)),
                                                 self.endpoint)) for s in shards]
        return Posteriors(np.concatenate([p.keys for p in parts]), np.concatenate([p.labels for p in parts]),
                          np.concatenate([p.probs for p in parts])).sorted()
