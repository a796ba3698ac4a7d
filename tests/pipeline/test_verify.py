"""Data verification: prepare writes Parquet page checksums, every read verifies them and names a damaged shard in one
line, footers are checked up front, old unverifiable data is refused, a rerun of prepare repairs a damaged shard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from damage import where  # noqa: F401 (a fixture)
from damage import break_footer, copy_dataset, flip_image_page, truncate
from pipeline import storage
from pipeline.dataset import SplitDataConfig, iter_epoch, read_shards
from pipeline.manifest import FORMAT, ManifestError, load_manifest
from pipeline.prepare import PrepareConfig, prepare
from pipeline.verify import ShardError, error_line, inspect_shards, read_table

pytestmark = pytest.mark.ray  # prepared_shards ingests through Ray


def one_line_naming(error: BaseException, uri: str, *words: str) -> str:
    text = str(error)
    assert "\n" not in text and f"shard {uri} " in text, text
    for word in words:
        assert word in text, text
    return text


def train_batches(manifest: str) -> int:
    """Rows of one epoch of the training split read as a training worker reads them; raises what the read raises."""
    m = load_manifest(manifest)
    uris = m.shard_uris("train")
    fs, _ = storage.resolve(uris[0])
    datasets = {"train": read_shards(uris, filesystem=fs, shuffle_seed=0)}
    (split,) = SplitDataConfig().configure(datasets, world_size=1, worker_handles=None, worker_node_ids=None)
    return sum(len(b["key"]) for b in iter_epoch(split["train"], batch_size=4, epoch=0, seed=0, rank=0))


def test_a_flipped_byte_in_a_data_page_fails_the_read_naming_the_shard(prepared_shards, ray_local, where):
    manifest = copy_dataset(prepared_shards, where)
    assert train_batches(manifest) == load_manifest(manifest).split("train").count  # clean data reads whole
    (uri,) = load_manifest(manifest).shard_uris("train")
    flip_image_page(uri)
    with pytest.raises(ShardError) as info:
        train_batches(manifest)
    one_line_naming(info.value, uri, "is corrupt", "CRC checksum verification failed", "re-run pipeline.prepare")
    with pytest.raises(ShardError) as info:
        read_table(uri)
    one_line_naming(info.value, uri, "is corrupt", "CRC")
    # The footer is intact: the up-front check passes, the pages are what give it away.
    assert [f.uri for f in inspect_shards(load_manifest(manifest), ["train"])] == [uri]


@pytest.mark.parametrize("damage", [truncate, break_footer])
def test_an_unreadable_footer_is_found_before_any_read(prepared_shards, ray_local, where, damage):
    manifest = copy_dataset(prepared_shards, where)
    (uri,) = load_manifest(manifest).shard_uris("val")
    damage(uri)
    with pytest.raises(ShardError) as info:
        inspect_shards(load_manifest(manifest), ["train", "val"])
    one_line_naming(info.value, uri, "is not a readable Parquet file")
    with pytest.raises(ShardError) as info:
        read_table(uri)
    one_line_naming(info.value, uri, "is not a readable Parquet file")


def test_a_shard_that_is_not_the_listed_one_is_refused(prepared_shards, ray_local, tmp_path):
    manifest = copy_dataset(prepared_shards, str(tmp_path / "data"))
    m = load_manifest(manifest)
    (train,), (val,) = m.shard_uris("train"), m.shard_uris("val")
    Path(val).write_bytes(Path(train).read_bytes())  # a readable Parquet file, but another shard
    with pytest.raises(ShardError) as info:
        inspect_shards(m, ["val"])
    one_line_naming(info.value, val, "the manifest lists", "re-run pipeline.prepare")


def test_error_line_is_found_inside_wrapping_text():
    line = f"shard s3://b/train-00003.parquet is corrupt (CRC checksum verification failed): re-run"
    wrapped = RuntimeError(f"Training failed.\nTraceback ...\npipeline.verify.ShardError: {line}\nFailed to read")
    assert error_line(wrapped) == line and error_line(ShardError(line)) == line
    assert error_line(RuntimeError("something else")) is None


def test_manifests_of_shards_without_page_checksums_are_refused(prepared_shards, tmp_path):
    doc = json.loads(Path(prepared_shards).read_text())
    assert doc["format"] == FORMAT == "verydeep-shards/2"
    doc["format"] = "verydeep-shards/1"
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError) as info:
        load_manifest(str(tmp_path))
    text = str(info.value)
    assert "\n" not in text and "without page checksums" in text and "re-run pipeline.prepare" in text


def test_a_rerun_of_prepare_rewrites_a_damaged_shard(tiny_imagenet, ray_local, tmp_path, capsys):
    dst = tmp_path / "shards"
    prepare(PrepareConfig(src=str(tiny_imagenet.root), dst=str(dst)))
    m = load_manifest(str(dst))
    (uri,) = m.shard_uris("val")
    clean = Path(uri).read_bytes()
    flip_image_page(uri)
    capsys.readouterr()
    prepare(PrepareConfig(src=str(tiny_imagenet.root), dst=str(dst)))
    out = capsys.readouterr().out
    assert "val-00000-of-00001.parquet: 8 rows" in out and "(1 written, " in out, out
    assert Path(uri).read_bytes() == clean and load_manifest(str(dst)) == m
    assert read_table(uri).num_rows == 8


def test_an_s3_shards_version_is_its_etag(prepared_shards, s3_server):
    # The sweep keys its stored posteriors by each shard's version: on S3 it must be the ETag (the content's MD5),
    # not the modification time, which S3 keeps to the second and so misses a rewrite within the same second.
    manifest = copy_dataset(prepared_shards, storage.join(s3_server.create_bucket(), "data"))
    facts = inspect_shards(load_manifest(manifest), ["val"])[0]
    bucket, key = facts.uri.removeprefix("s3://").split("/", 1)
    assert facts.version == s3_server.client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
