"""Shards read with their integrity checked: Parquet page checksums on every read, footers before a job starts.

``pipeline.prepare`` writes every Parquet page with its CRC-32 (the format's own page checksum), and every read of a
shard here verifies them (pyarrow's ``page_checksum_verification``): a flipped bit in any page that is read fails the
read of that shard. A shard is read and checked whole before any of its rows is passed on, so no row of a damaged
shard reaches training or the sweep. Any failure is a :class:`ShardError` whose message is one line naming the
shard's URI; ``error_line`` finds that line again in whatever Ray wraps it in.

Training reads through Ray Data with :class:`ShardDatasource`. Ray 2.60's ``read_parquet`` cannot verify page
checksums: its default reader (the V2 Parquet datasource) keeps ``read_parquet``'s pyarrow keyword arguments without
using them and hands every scanner its own ``fragment_scan_options``, which replace a format-level default (what
``dataset_kwargs`` would set); the older V1 reader (``DataContext.use_datasource_v2 = False``) does honour
``fragment_scan_options=...``, but its errors do not say which file failed. ``ShardDatasource`` is Ray Data's own
extension point for a file format (``FileBasedDatasource``, as Ray's ORC reader): Ray keeps the listing, the seeded
per-epoch file shuffle, the read tasks, retries of transient storage errors and the streaming; this module only opens
a shard, reads it with its checksums verified and names it in any error.

Before a job starts, ``inspect_shards`` reads every shard's footer (metadata only, in parallel threads): an unreadable
footer (a truncated shard, a corrupted footer) or a shard whose size or row count is not the manifest's ends the job
in one line before any compute. What it observes of each object (size, and its ETag on S3 or its modification time on
a filesystem) names the data as stored, for caches keyed by data (``evaluation.posteriors.data_id``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from pipeline import storage
from pipeline.manifest import Manifest, Shard

INSPECT_THREADS = 32  # footer reads are latency-bound (a HEAD and one ranged GET each on S3)
_REWRITE = "re-run pipeline.prepare to rewrite it"
_LINE_RE = re.compile(r"ShardError: (shard [^\n]*)")


class ShardError(storage.StorageError):
    """A shard that cannot be used as stored (damaged pages, unreadable footer, not what the manifest lists)."""


@dataclass(frozen=True)
class ShardFacts:
    """What storage and the footer say of one shard: its size, its version as stored, its rows."""

    uri: str
    size: int
    version: str  # the S3 ETag, else the modification time in ns: changes whenever the object is rewritten
    rows: int


def _io_error(text: str) -> bool:
    # Transient storage errors keep their own wording, so that Ray Data's retry patterns (AWS error codes) still match.
    return "AWS Error" in text or "curlCode" in text or "Could not connect" in text


def shard_error(exc: BaseException, uri: str, what: str, note: str = "") -> storage.StorageError:
    """A one-line error naming ``uri`` for a failure of reading its ``what`` ("footer" or "pages")."""
    text = note + " ".join(str(exc).split())
    if isinstance(exc, FileNotFoundError):
        return storage.StorageError(f"shard not found: {uri}")
    if _io_error(text):
        return storage.StorageError(f"cannot read shard {uri}: {text}")
    if what == "footer":
        return ShardError(f"shard {uri} is not a readable Parquet file ({text})")
    return ShardError(f"shard {uri} is corrupt ({text}): {_REWRITE}")


def open_verified(source: Any, uri: str, verify: bool = True) -> pq.ParquetFile:
    """A Parquet reader over ``source`` (a path or open file) that verifies page checksums; ShardError names ``uri``.
    (``verify=False`` only to measure what verifying costs: benchmarks/verify_cost.py.)"""
    try:
        # pre_buffer: one coalesced read of a row group's column chunks, not one request per column (S3).
        return pq.ParquetFile(source, page_checksum_verification=verify, pre_buffer=True)
    except (OSError, pa.ArrowException) as exc:
        raise shard_error(exc, uri, "footer") from None


def read_verified(source: Any, uri: str, columns: Sequence[str] | None = None, verify: bool = True) -> list[pa.Table]:
    """Every row group of a shard (only ``columns``, all when None), each page's checksum verified before any is
    returned."""
    return _row_groups(open_verified(source, uri, verify), uri, columns)


def _row_groups(parquet: pq.ParquetFile, uri: str, columns: Sequence[str] | None) -> list[pa.Table]:
    cols = list(columns) if columns is not None else None
    try:
        return [parquet.read_row_group(i, columns=cols) for i in range(parquet.num_row_groups)]
    except (OSError, pa.ArrowException) as exc:
        raise shard_error(exc, uri, "pages") from None


def _open(uri: str, endpoint: str | None, region: str | None) -> tuple[pafs.FileSystem, str, pa.NativeFile]:
    fs, path = storage.resolve(uri, endpoint, region)
    try:
        return fs, path, fs.open_input_file(path)
    except OSError as exc:
        raise shard_error(exc, uri, "footer") from None


def read_table(uri: str, columns: Sequence[str] | None = None, endpoint: str | None = None,
               region: str | None = None) -> pa.Table:
    """One shard as a table (its ``columns``), read from storage with its page checksums verified."""
    _, _, f = _open(uri, endpoint, region)
    with f:
        parquet = open_verified(f, uri)
        parts = _row_groups(parquet, uri, columns)
        schema = parquet.schema_arrow
        schema = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    return pa.concat_tables(parts) if parts else schema.empty_table()


def intact(data: bytes, uri: str) -> bool:
    """Whether a shard's bytes read back whole with every page's checksum verified (all columns)."""
    try:
        read_verified(pa.BufferReader(data), uri)
    except storage.StorageError:
        return False
    return True


class ShardDatasource(FileBasedDatasource):
    """Ray Data over shards: each read task opens a shard, verifies all its pages, then yields its row groups."""

    _FILE_EXTENSIONS = ["parquet"]

    def __init__(self, uris: Sequence[str], columns: Sequence[str], verify: bool = True, **kwargs: Any) -> None:
        super().__init__(list(uris), file_extensions=self._FILE_EXTENSIONS, **kwargs)
        self._columns, self._verify = list(columns), verify
        # Ray hands the read a filesystem path (bucket/key on S3); errors name the URI the user gave.
        self._scheme = storage.S3_SCHEME if storage.is_s3(uris[0]) else ""

    def _open_input_source(self, filesystem: pafs.FileSystem, path: str, **open_args: Any) -> pa.NativeFile:
        # A Parquet footer is at the end of the file: random access, not Ray's default sequential stream.
        return filesystem.open_input_file(path)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        for table in read_verified(f, self._scheme + path, self._columns, self._verify):
            if table.num_rows:
                yield table

    def get_name(self) -> str:
        """The read operator's name in Ray Data's progress and stats."""
        return "ReadShards"


def _inspect(uri: str, shard: Shard, endpoint: str | None, region: str | None) -> ShardFacts:
    fs, path, f = _open(uri, endpoint, region)
    with f:
        size = f.size()
        etag = f.metadata().get("ETag")  # keys are str, values bytes if storage.is_s3(uri) else None
        try:
            rows = pq.read_metadata(f).num_rows
        except (OSError, pa.ArrowException) as exc:
            note = f"{size} bytes, the manifest lists {shard.bytes}; " if size != shard.bytes else ""
            raise shard_error(exc, uri, "footer", note) from None
    if size != shard.bytes or rows != shard.rows:
        raise ShardError(f"shard {uri} is {size} bytes with {rows} rows, the manifest lists {shard.bytes} bytes "
                         f"with {shard.rows} rows (replaced or damaged): {_REWRITE}")
    version = etag.decode().strip('"') if etag else str(fs.get_file_info(path).mtime_ns)
    return ShardFacts(uri, size, version, rows)


def inspect_shards(manifest: Manifest, splits: Sequence[str], endpoint: str | None = None,
                   region: str | None = None) -> list[ShardFacts]:
    """Read every shard's footer of the splits, in parallel; ShardError names the first bad one in manifest order."""
    work = [(uri, shard) for split in splits
            for uri, shard in zip(manifest.shard_uris(split), manifest.split(split).shards, strict=True)]
    if not work:
        return []

    def one(item: tuple[str, Shard]) -> ShardFacts | storage.StorageError:
        try:
            return _inspect(*item, endpoint, region)
        except storage.StorageError as exc:
            return exc

    with ThreadPoolExecutor(min(INSPECT_THREADS, len(work))) as pool:
        results = list(pool.map(one, work))
    errors = [r for r in results if isinstance(r, storage.StorageError)]
    if errors:
        more = f" (and {len(errors) - 1} more shards fail this check)" if len(errors) > 1 else ""
        raise type(errors[0])(f"{errors[0]}{more}")
    return [r for r in results if isinstance(r, ShardFacts)]


def error_line(error: BaseException | str) -> str | None:
    """The one-line ShardError message inside an error, its causes or their text (e.g. a Train worker's traceback
    inside Ray Train's error), or None."""
    if isinstance(error, str):
        found = _LINE_RE.search(error)
        return found.group(1) if found else None
    seen: set[int] = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # A Ray task's error is also an instance of its cause's class, with Ray's own header as its text: go to the
        # cause it carries (the error raised in the task).
        cause = getattr(exc, "cause", None)
        if isinstance(exc, ShardError) and not isinstance(cause, BaseException):
            return str(exc).splitlines()[0]
        found = _LINE_RE.search(str(exc))
        if found:
            return found.group(1)
        exc = cause if isinstance(cause, BaseException) else exc.__cause__ or exc.__context__
    return None
