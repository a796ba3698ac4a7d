"""Ray Data over shards: exactly-once epochs across 1, 2 and 3 workers, per-epoch shuffles seeded by (seed, epoch)."""

import threading
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.dataset import SplitDataConfig, iter_epoch, read_shards

pytestmark = pytest.mark.ray

N_ROWS, N_SHARDS = 47, 5  # 47 divides by neither 2 nor 3: the remainder is exercised


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Five small Parquet shards of 47 rows with the pipeline's columns (the bytes need not be JPEGs here)."""
    root = tmp_path_factory.mktemp("shards")
    paths, row = [], 0
    sizes = [10, 10, 10, 10, 7]
    for s, size in enumerate(sizes):
        keys = [f"train/c{row + i:03d}" for i in range(size)]
        table = pa.table({
            "key": keys,
            "label": pa.array([(row + i) % 3 for i in range(size)], pa.int32()),
            "height": pa.array([64] * size, pa.int32()),
            "width": pa.array([80] * size, pa.int32()),
            "image": pa.array([k.encode() for k in keys], pa.binary()),
        })
        path = root / f"train-{s:05d}.parquet"
        pq.write_table(table, path, row_group_size=4)
        paths.append(str(path))
        row += size
    assert row == N_ROWS
    return paths


def consume(splits, name, epochs, batch_size=4, seed=0):
    """Iterate every worker's split concurrently (as Train workers do) and return keys per (epoch, rank)."""
    seen = {}

    def worker(rank, it):
        for epoch in range(epochs):
            keys = []
            for batch in iter_epoch(it, batch_size=batch_size, epoch=epoch, seed=seed, rank=rank, shuffle_buffer=8):
                keys += list(batch["key"])
            seen[epoch, rank] = keys

    threads = [threading.Thread(target=worker, args=(r, s[name])) for r, s in enumerate(splits)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker's split hung"
    return seen


@pytest.mark.parametrize("cache", [False, True], ids=["streamed", "cached"])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_each_image_once_per_epoch_across_workers(ray_local, shards, workers, cache):
    all_keys = {f"train/c{i:03d}" for i in range(N_ROWS)}
    datasets = {"train": read_shards(shards, shuffle_seed=0, cache=cache), "val": read_shards(shards, cache=cache)}
    splits = SplitDataConfig().configure(datasets, world_size=workers, worker_handles=None, worker_node_ids=None)
    epochs = 2
    seen = consume(splits, "train", epochs)
    orders = []
    for epoch in range(epochs):
        per_rank = [seen[epoch, r] for r in range(workers)]
        keys = [k for ks in per_rank for k in ks]
        counts = Counter(keys)
        assert max(counts.values()) == 1, "an image was seen twice in one epoch"
        assert set(keys) <= all_keys
        # Equal split: every worker the same number of rows; only the remainder (< workers) is dropped.
        assert len({len(ks) for ks in per_rank}) == 1
        assert len(keys) == N_ROWS - N_ROWS % workers
        orders.append(keys)
    assert orders[0] != orders[1], "the order did not change between epochs"
    # The same seed on a fresh dataset gives every worker the same rows in the same order (what a rerun sees).
    again = SplitDataConfig().configure({"train": read_shards(shards, shuffle_seed=0, cache=cache)}, world_size=workers,
                                        worker_handles=None, worker_node_ids=None)
    assert consume(again, "train", epochs) == seen
    # Evaluation splits drop and pad nothing: every image exactly once in total.
    val = consume(splits, "val", 1)
    val_keys = [k for r in range(workers) for k in val[0, r]]
    assert Counter(val_keys) == Counter(all_keys)


def shard_order(ds, executions):
    """The order in which shards are read in each execution (single reader, order preserved)."""
    ds.context.execution_options.preserve_order = True
    orders = []
    for _ in range(executions):
        keys = [row["key"] for row in ds.iter_rows()]
        firsts = [k for k in keys if int(k.split("c")[1]) % 10 == 0]
        orders.append(tuple(firsts))
    return orders


def test_shard_order_is_seeded_by_seed_and_epoch(ray_local, shards):
    uninterrupted = shard_order(read_shards(shards, shuffle_seed=7), 4)
    assert len(set(uninterrupted)) > 1, "the shard order never changed across epochs"
    # A run resumed at epoch 2 reads epochs 2 and 3 in the same shard order as the uninterrupted run.
    resumed = shard_order(read_shards(shards, shuffle_seed=7, start_epoch=2), 2)
    assert resumed == uninterrupted[2:]
    assert shard_order(read_shards(shards, shuffle_seed=8), 1)[0] != uninterrupted[0] or \
        shard_order(read_shards(shards, shuffle_seed=9), 1)[0] != uninterrupted[0]
    # A cached split is read once in manifest order, whatever the seed or the epoch (its shuffle is the buffer's).
    cached = shard_order(read_shards(shards, shuffle_seed=7, start_epoch=3, cache=True), 3)
    assert set(cached) == {tuple(f"train/c{i:03d}" for i in range(0, N_ROWS, 10))}


def test_each_shard_is_read_by_a_task_of_its_own(ray_local, shards):
    # Grouping shards into tasks by the CPUs free at the time would move block boundaries, and with them the local
    # shuffle buffer's draws, whenever a restarted worker group found the cluster busier than the first one did.
    assert read_shards(shards, shuffle_seed=7).materialize().num_blocks() == len(shards)


def test_no_shards_is_a_clear_error():
    with pytest.raises(ValueError, match="no shards"):
        read_shards([])
