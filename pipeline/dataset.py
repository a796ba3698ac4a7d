"""Ray Data over the Parquet shards: per-epoch shuffles, splits across Ray Train workers, decoded batches.

How an epoch is formed (Ray Data owns sharding, shuffling and epochs; nothing here re-implements them):

* **Shard order**: the read's ``shuffle=FileShuffleConfig(seed, reseed_after_execution=True)`` draws a new
  shard order on every execution of the dataset, i.e. every epoch, seeded by (seed, execution index). The execution
  index starts at the epoch the run (re)starts from (``start_epoch``), so a resumed run shuffles epoch e as an
  uninterrupted run would. A split small enough to keep in the object store (``cache=True``) is read once, in
  manifest order, and keeps that order: its per-epoch shuffle is the local shuffle buffer's alone.
* **Determinism**: the same (seed, epoch) gives every worker the same rows in the same order, run after run and
  after a restart, on the same cluster shape. Three things make it so: reads preserve order (never task completion
  order, which is what a cached split was materialised in before and what made reruns differ with more than one
  shard), the split's start epoch is the one the run resumes from (Ray Train calls the dataset factory again when it
  restarts workers; ``trainer.run`` passes one), and rows are dealt to workers by row count alone, without Ray
  Data's node-locality hints, which depend on where a read task happened to run.
* **Split**: Ray Train's ``DataConfig`` hands each worker a ``streaming_split`` of the training set with
  ``equal=True``: every worker gets the same number of rows, so DDP workers take the same number of steps. Rows
  that would make the split uneven (fewer than the number of workers) are *dropped* for that epoch; they differ from
  epoch to epoch because the order does. No image is ever duplicated or padded.
  Validation uses ``equal=False``: nothing dropped, nothing padded, every image counted exactly once.
* **Local shuffle**: each worker's rows pass through a shuffle buffer seeded by (seed, epoch, rank).
* **Verified reads**: shards are read through ``pipeline.verify.ShardDatasource`` (Ray Data's file datasource with
  a Parquet reader that verifies every page's checksum): a damaged shard fails its read task with one line naming
  it, before any of its rows is passed on. Ray's ``read_parquet`` cannot verify page checksums (see
  ``pipeline.verify``). The listing happens once, when the dataset is made, not at every execution.
* **Decode**: a collate function draws each image's augmentation from (seed, epoch, key) — the same draws whatever
  worker or order — and decodes in Ray Data's prefetch threads, so decoding overlaps the training step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import ray
from ray.data import DataIterator, Dataset, FileShuffleConfig
from ray.train import DataConfig

from pipeline.shards import COLUMNS
from pipeline.verify import ShardDatasource, ShardError, error_line

TRAIN, VAL = "train", "val"


def derived_seed(*parts: object) -> int:
    """A 32-bit seed from any parts (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=4).digest(), "little")


def read_shards(
    paths: Sequence[str],
    *,
    filesystem: Any = None,
    shuffle_seed: int | None = None,
    start_epoch: int = 0,
    columns: Sequence[str] = COLUMNS,
    cache: bool = False,
) -> Dataset:
    """A dataset over Parquet shards; with ``shuffle_seed`` the shard order is redrawn each epoch, seeded by (seed,
    epoch).

    With ``cache`` the rows are read once, in manifest order, into Ray's object store (for splits small enough to hold
    there: each epoch then skips the seconds a read starts with) and the shard order stays as read.
    """
    if not paths:
        raise ValueError("no shards to read: the manifest lists none for this split")
    shuffle = None
    if shuffle_seed is not None and not cache:
        shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True)
    # One read task per shard: Ray otherwise groups shards into as many tasks as the CPUs it sees free when an
    # epoch starts, and the grouping sets the block boundaries that the local shuffle buffer's draws depend on, so a
    # worker group restarted while the cluster was busier shuffled another way than the uninterrupted run.
    ds = ray.data.read_datasource(ShardDatasource(paths, columns, filesystem=filesystem, shuffle=shuffle),
                                  override_num_blocks=len(paths))
    if cache:
        # Materialised in plan order, not in the order read tasks finish: otherwise the cached rows, and with them
        # every epoch's batches, differ from run to run as soon as there is more than one shard.
        ds.context.execution_options.preserve_order = True
        ds = ds.materialize()
    # Epoch e of a resumed run must draw the order epoch e of an uninterrupted run drew: Ray Data seeds the shuffle
    # with (seed, execution index) and counts executions from 0 per dataset, so start the count at e.
    # (tests/pipeline/test_dataset.py checks that this still holds on the installed Ray.)
    ds.context._execution_idx = start_epoch
    return ds


class SplitDataConfig(DataConfig):
    """Ray Train's DataConfig with ``equal=True`` splits for training and ``equal=False`` for evaluation splits."""

    def __init__(self, train_name: str = TRAIN, preserve_order: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._train_name = train_name
        # Blocks in plan order: with the seeded shard and buffer shuffles, the same seed gives the same batches,
        # so a rerun or a restart from a checkpoint sees what an uninterrupted run saw.
        self._preserve_order = preserve_order

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):  # type: ignore[override]
        """Split the training set equally (DDP needs equal steps) and the others exactly, without drop or pad."""
        equal = {name: name == self._train_name for name in datasets}
        output: list[dict[str, DataIterator]] = [{} for _ in range(world_size)]
        # Locality hints deal blocks by where their read task ran, which differs from run to run; without them the
        # split is a function of the (ordered) blocks alone. Reading a block from another node costs network, not
        # correctness: a resumed epoch must skip exactly the rows the interrupted one consumed.
        hints = None
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            ds.context.execution_options.preserve_order = self._preserve_order
            for i, split in enumerate(ds.streaming_split(world_size, equal=equal[name], locality_hints=hints)):
                output[i][name] = split
        return output


def iter_epoch(
    shard: DataIterator,
    *,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int,
    collate_fn: Callable[[dict[str, np.ndarray]], Any] | None = None,
    shuffle_buffer: int | None = None,
    prefetch_batches: int = 2,
    drop_last: bool = False,
) -> Iterator[Any]:
    """One epoch of this worker's batches: locally shuffled (seeded by seed, epoch, rank), collated in prefetch threads."""
    kwargs: dict[str, Any] = dict(batch_size=batch_size, prefetch_batches=prefetch_batches, drop_last=drop_last)
    if shuffle_buffer:
        kwargs.update(local_shuffle_buffer_size=max(shuffle_buffer, batch_size),
                      local_shuffle_seed=derived_seed(seed, epoch, rank))
    try:
        if collate_fn is None:
            yield from shard.iter_batches(batch_format="numpy", **kwargs)
        else:
            yield from shard.iter_torch_batches(collate_fn=collate_fn, **kwargs)
    except Exception as e:
        line = error_line(e)  # a damaged shard, reported by a read task inside Ray's wrapping: its one line alone
        if line is None:
            raise
        raise ShardError(line) from None
