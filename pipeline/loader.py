"""Last mile: Ray Data batches of shard rows -> decoded, augmented tensors at a training or evaluation worker.

The collate functions run in Ray Data's prefetch threads (``iter_torch_batches(prefetch_batches>0)``), so decoding
overlaps the training step. Each image's augmentation is drawn from (seed, epoch, key), so an image gets the same
crop, flip and colour shift whichever worker reads it and in whatever order: a resumed or re-split run sees the same
augmented images.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from vgg.augment import PCA_STD, check_scales, sample_params, seed_for


@dataclass(frozen=True)
class TrainAugment:
    """The per-image randomness of training (Sec. 3.1): S in [smin, smax], crop, flip, PCA colour shift std."""

    smin: int
    smax: int
    crop: int
    flip: bool = True
    pca_std: float = PCA_STD

    def __post_init__(self) -> None:
        check_scales(self.smin, self.smax, self.crop)


class _Locked:
    """Serialise calls into a decoder that is not thread-safe (a DALI pipeline is one stateful object)."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder
        self.lock = None if getattr(decoder, "thread_safe", False) else threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.lock is None:
            return self.decoder(*args, **kwargs)
        with self.lock:
            return self.decoder(*args, **kwargs)


class TrainCollate(NumpyBatchCollateFn):
    """Shard rows -> (images (N, 3, crop, crop) float32, labels (N,) int64, keys) with this epoch's augmentation."""

    def __init__(self, decoder: Any, augment: TrainAugment, *, seed: int, epoch: int) -> None:
        self.decode, self.augment, self.seed, self.epoch = _Locked(decoder), augment, seed, epoch

    def params(self, batch: dict[str, np.ndarray]) -> list:
        """Draw each row's augmentation from (seed, epoch, key) and its stored size."""
        a = self.augment
        return [
            sample_params(np.random.default_rng(seed_for(self.seed, self.epoch, str(key))), int(h), int(w),
                          a.smin, a.smax, a.crop, flip=a.flip, pca_std=a.pca_std)
            for key, h, w in zip(batch["key"], batch["height"], batch["width"])
        ]

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
        keys = tuple(str(k) for k in batch["key"])
        images = self.decode(list(batch["image"]), self.params(batch), keys=list(keys))
        labels = torch.as_tensor(np.asarray(batch["label"], dtype=np.int64), device=images.device)
        return images, labels, keys


class EvalCollate(NumpyBatchCollateFn):
    """Shard rows -> (list of (3, h, w) images with shorter side Q, labels) for dense evaluation; sizes differ."""

    def __init__(self, decoder: Any, q: int) -> None:
        self.decode, self.q = _Locked(decoder), q

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[list[torch.Tensor], torch.Tensor]:
        images = self.decode(list(batch["image"]), self.q, keys=[str(k) for k in batch["key"]])
        labels = torch.as_tensor(np.asarray(batch["label"], dtype=np.int64))
        return images, labels
