"""The loader inside the real pipeline: stored shards -> Ray Data -> iter_epoch -> TrainCollate / EvalCollate.

test_decode.py checks each transform alone, on JPEG bytes handed to the decoder. Here the same checks run on what a
Train worker receives: every batch comes out of Ray Data (shard read, per-epoch shuffle, equal split, local shuffle
buffer, collate in the prefetch threads), and each image in it must equal the reference transform of the JPEG stored
under its key, with the augmentation drawn from (seed, epoch, key) -- whatever order the rows arrived in.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import jpeg_samples as J
from pipeline.dataset import SplitDataConfig, iter_epoch, read_shards
from pipeline.decode import make_eval_decoder, make_train_decoder
from pipeline.decode_cpu import dct_reduction
from pipeline.loader import EvalCollate, TrainAugment, TrainCollate
from pipeline.manifest import load_manifest
from vgg import augment as A

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities")]

# The fixture's images are 40-120 px a side: S in [64, 96] upscales some and downscales others, by less than 2x, so
# every item takes the full-decode path whose tolerance is stated for any image. (libjpeg's DCT-domain downscale,
# used from 2x on, is checked on photographs in test_decode.py; on these tiny noisy images it drifts further.)
CROP, SMIN, SMAX, Q = 32, 64, 96, 40
SEED, BATCH = 11, 8
# tests/pipeline/test_decode.py's tolerances for the CPU backend (0-255 scale): full decode; DCT-downscaled decode.
TOL, TOL_DCT = (0.5, 1.25), (1.0, 3.0)


@pytest.fixture(scope="module")
def stored(prepared_shards):
    """The manifest and every stored training row by key: (jpeg bytes, label, height, width)."""
    manifest = load_manifest(prepared_shards)
    rows = {}
    for uri in manifest.shard_uris("train"):
        for r in pq.read_table(uri, columns=["key", "label", "height", "width", "image"]).to_pylist():
            rows[r["key"]] = (r["image"], r["label"], r["height"], r["width"])
    return manifest, rows


class KeyedCollate(TrainCollate):
    """TrainCollate that also hands back each row's index in ``keys`` (the batch carries no keys otherwise)."""

    def __init__(self, *args, keys: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.index = {k: i for i, k in enumerate(keys)}

    def __call__(self, batch):
        images, labels, keys = super().__call__(batch)
        assert list(keys) == [str(k) for k in batch["key"]]
        return images, labels, torch.as_tensor([self.index[k] for k in keys])


def train_split(manifest):
    """One Train worker's split of the training set, as Ray Train hands it over (SplitDataConfig, equal split)."""
    ds = read_shards(manifest.shard_uris("train"), shuffle_seed=SEED)
    return SplitDataConfig().configure({"train": ds}, world_size=1, worker_handles=None,
                                       worker_node_ids=None)[0]["train"]


def reference(stored_row, key: str, epoch: int, manifest) -> tuple[torch.Tensor, tuple[float, float]]:
    """The reference transform of the stored JPEG with the params the loader draws for (seed, epoch, key)."""
    jpeg, _, height, width = stored_row
    p = A.sample_params(np.random.default_rng(A.seed_for(SEED, epoch, key)), height, width, SMIN, SMAX, CROP)
    ref = A.train_reference(J.decode_reference(jpeg), p, CROP, manifest.mean_rgb, manifest.eigval, manifest.eigvec)
    h, w = A.rescaled_size(height, width, p.scale)
    return ref, (TOL_DCT if dct_reduction(min(height / h, width / w)) > 1 else TOL)


def test_train_batches_match_the_reference_per_key_and_change_per_epoch(stored):
    manifest, rows = stored
    keys = sorted(rows)
    decoder = make_train_decoder("cpu", crop=CROP, mean=manifest.mean_rgb, eigval=manifest.eigval,
                                 eigvec=manifest.eigvec, device="cpu")
    split = train_split(manifest)
    per_epoch = []
    for epoch in range(2):
        collate = KeyedCollate(decoder, TrainAugment(SMIN, SMAX, CROP), seed=SEED, epoch=epoch, keys=keys)
        out = {}
        for images, labels, index in iter_epoch(split, batch_size=BATCH, epoch=epoch, seed=SEED, rank=0,
                                                collate_fn=collate, shuffle_buffer=16):
            assert images.shape == (len(index), 3, CROP, CROP) and images.dtype == torch.float32
            assert labels.dtype == torch.int64 and labels.shape == (len(index),)
            assert torch.isfinite(images).all()
            for image, label, i in zip(images, labels, index.tolist()):
                key = keys[i]
                assert key not in out, f"{key} twice in epoch {epoch}"
                assert label.item() == rows[key][1]
                out[key] = image
        # One worker, equal split: every stored image exactly once.
        assert sorted(out) == keys
        for key, image in out.items():
            ref, (max_mad, max_p99) = reference(rows[key], key, epoch, manifest)
            d = (image.double() - ref).abs().flatten()
            mad, p99 = d.mean().item(), d.quantile(0.99).item()
            assert mad < max_mad and p99 < max_p99, f"{key} epoch {epoch}: {mad=:.3f} {p99=:.3f}"
        per_epoch.append(out)
    # New draws each epoch: (nearly) every image is cropped, flipped or shifted differently.
    changed = sum(not torch.equal(per_epoch[0][k], per_epoch[1][k]) for k in keys)
    assert changed >= 0.9 * len(keys), f"only {changed} of {len(keys)} images changed between epochs"


def test_eval_batches_have_shorter_side_q(stored):
    manifest, rows = stored
    decoder = make_eval_decoder("cpu", mean=manifest.mean_rgb, device="cpu")
    ds = read_shards(manifest.shard_uris("val"))
    split = SplitDataConfig().configure({"val": ds}, world_size=1, worker_handles=None,
                                        worker_node_ids=None)[0]["val"]
    seen = 0
    for images, labels in iter_epoch(split, batch_size=BATCH, epoch=0, seed=SEED, rank=0,
                                     collate_fn=EvalCollate(decoder, Q)):
        assert isinstance(images, list) and len(images) == len(labels) and labels.dtype == torch.int64
        for image in images:
            assert image.dtype == torch.float32 and image.shape[0] == 3 and min(image.shape[1:]) == Q
        seen += len(images)
    assert seen == manifest.split("val").count
