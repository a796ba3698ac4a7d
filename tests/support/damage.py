"""Damaged copies of a prepared dataset, as storage or a bad copy would leave them (tests of data verification)."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.manifest import MANIFEST_NAME, load_manifest


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path) -> str:
    """A fresh directory for a copy of the dataset: local, or a bucket on the loopback S3 server."""
    if request.param == "local":
        return str(tmp_path / "data")
    return storage.join(request.getfixturevalue("s3_server").create_bucket(), "data")


def copy_dataset(manifest: str, dst: str) -> str:
    """Copy a prepared dataset (manifest and shards) to ``dst`` (local directory or s3://); the new manifest's URI."""
    m = load_manifest(manifest)
    for split in m.splits:
        for shard, uri in zip(m.splits[split].shards, m.shard_uris(split), strict=True):
            storage.write_bytes_atomic(storage.join(dst, shard.path), storage.read_bytes(uri))
    target = storage.join(dst, MANIFEST_NAME)
    storage.write_bytes_atomic(target, storage.read_bytes(storage.join(m.root, MANIFEST_NAME)))
    return target


def flip_image_page(uri: str, count: int = 5) -> int:
    """Flip ``count`` bytes inside the first data page of the ``image`` column (its values, past the page header),
    in place; returns the file offset of the first flipped byte."""
    data = bytearray(storage.read_bytes(uri))
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    group = meta.row_group(0)
    chunk = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == "image")
    assert chunk.dictionary_page_offset is None, "the image column is not dictionary-encoded"
    # A data page header with no statistics is a few dozen bytes; the first image (a JPEG of >= 1 KB) follows it.
    offset = chunk.data_page_offset + 200
    assert offset + count < chunk.data_page_offset + chunk.total_compressed_size
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    storage.write_bytes_atomic(uri, bytes(data))
    return offset


def truncate(uri: str, keep: float = 0.6) -> None:
    """Cut the shard short (an interrupted copy): its footer is gone."""
    data = storage.read_bytes(uri)
    storage.write_bytes_atomic(uri, data[: int(len(data) * keep)])


def break_footer(uri: str) -> None:
    """Overwrite the start of the Parquet footer (the file metadata) with garbage; the size stays the same."""
    data = bytearray(storage.read_bytes(uri))
    footer_len = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - footer_len
    for i in range(start, start + 16):
        data[i] = 0xEE
    storage.write_bytes_atomic(uri, bytes(data))
