"""pipeline.shards: the shard plan, the columns readers take, one shard written and kept."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
from source_images import jpeg

from pipeline.shards import COLUMNS, SCHEMA, ShardSpec, SourceFile, build_shard, plan_shards, read_footer


def test_plan_is_deterministic_complete_and_bounded():
    files = [
        SourceFile(f"train/n{c:08d}/img{i}", f"train/n{c:08d}/img{i}.JPEG", 1000 + 37 * i, c, f"n{c:08d}")
        for c in range(5)
        for i in range(40)
    ]
    plans = plan_shards(files, "train", target_bytes=20_000, max_rows=None, stats_images=50)
    again = plan_shards(list(reversed(files)), "train", target_bytes=20_000, max_rows=None, stats_images=50)
    assert plans == again  # independent of listing order
    keys = [f.key for p in plans for f in p.files]
    assert sorted(keys) == sorted(f.key for f in files)  # every file exactly once
    assert all(sum(f.size for f in p.files) <= 20_000 for p in plans)
    assert [p.name for p in plans][:2] == [
        f"train/train-00000-of-{len(plans):05d}.parquet",
        f"train/train-00001-of-{len(plans):05d}.parquet",
    ]
    assert sum(f.stats for p in plans for f in p.files) == 50
    assert all(len({f.label for f in p.files}) >= 3 for p in plans)  # a hashed order mixes the classes
    capped = plan_shards(files, "train", target_bytes=10**9, max_rows=7)
    assert [len(p.files) for p in capped] == [7] * 28 + [4]


def test_readers_take_the_columns_named_beside_the_schema():
    from evaluation import shard as evaluation_shard
    from pipeline import dataset

    assert dataset.COLUMNS is COLUMNS and evaluation_shard.COLUMNS is COLUMNS  # one list, not copies
    assert set(COLUMNS) <= set(SCHEMA.names)


def test_a_shard_is_written_with_its_record_and_kept_on_rerun(tmp_path):
    src = tmp_path / "src"
    files = []
    for i, (h, w) in enumerate([(40, 60), (300, 200)]):
        rel = f"train/n01/img{i}.JPEG"
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(jpeg(np.full((h, w, 3), 50 * i, np.uint8)))
        files.append(SourceFile(f"train/n01/img{i}", rel, (src / rel).stat().st_size, 0, "n01", stats=i == 0))
    (src / "train/n01/bad.JPEG").write_bytes(b"")
    files.append(SourceFile("train/n01/bad", "train/n01/bad.JPEG", 0, 0, "n01"))
    spec = ShardSpec(name="train/train-00000-of-00001.parquet", fingerprint="f" * 64, files=tuple(files),
                     src=str(src), dst=str(tmp_path / "dst"), endpoint=None, region=None, read_threads=2,
                     row_group_bytes=1 << 20, max_shorter_side=100, jpeg_quality=90, max_megapixels=64.0,
                     stats_pixels_per_image=10)
    written = build_shard(spec)
    assert (written["status"], written["rows"], written["unchanged"], written["resized"]) == ("written", 2, 1, 1)
    assert written["skipped"] == [{"path": "train/n01/bad.JPEG", "reason": "empty file"}]
    assert (written["stats"]["images"], written["stats"]["pixels"]) == (1, 10)
    uri = str(tmp_path / "dst" / spec.name)
    table = pq.read_table(uri)
    assert table.schema.remove_metadata() == SCHEMA
    assert table.column("key").to_pylist() == ["train/n01/img0", "train/n01/img1"]  # the planned order
    assert (table.column("height").to_pylist(), table.column("width").to_pylist()) == ([40, 150], [60, 100])
    assert read_footer(uri, None, None) == {k: written[k] for k in ("fingerprint", "skipped", "stats", "unchanged",
                                                                      "converted", "resized", "rows")}
    kept = build_shard(spec)
    assert kept == {**written, "status": "kept"}
    assert build_shard(replace(spec, fingerprint="e" * 64))["status"] == "written"  # another plan: rewritten
