"""Appendix B's image descriptors: a fixed net's dense FC7 map, averaged over the image and its mirror image, stored.

For one (net, Q, shard): each image is rescaled to its shorter side Q (the sweep's decoders, ``evaluation.shard``),
the net without its last layer runs densely on it and its FC7 map (after ReLU) is averaged over space and over the
image and its mirror image (``vgg.evaluate.dense_descriptors``): one ``fc_width``-D descriptor per image (4096-D for
the paper's nets). The mirror image is left out for a net trained without flips (its card says so: mirrored digits
are other digits). Pooling over Q and the L2 normalisation come later (``evaluation.svm``), so the stored files
serve both pooling rules and any SVM fit.

Store layout under the results directory (local or s3://), one Parquet file per (data, net, Q, shard)::

    features/<data id>/<model id>/q<Q>/fc7/<shard>.parquet    columns key, label, probs (the descriptor, float32)

The same keys as the posterior store (``evaluation.posteriors``): the data id hashes the split's shards as stored,
the model id the net's card and weights, so a descriptor is reused only for the same images and the same net.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from evaluation.posteriors import PosteriorStore
from evaluation.shard import prepare_unit, shape_batches
from pipeline import storage
from pipeline.decode import EvalDecoder
from vgg.evaluate import dense_descriptors, stack_by_shape
from vgg.model import VGG

ROOT = "features"
VIEW = "fc7"


class FeatureStore(PosteriorStore):
    """Per-image descriptors of one split under a results directory (the posterior store's files, another root)."""

    def __init__(self, out: str, data: str, endpoint: str | None = None) -> None:
        super().__init__(out, data, endpoint)
        self.root = storage.join(out, ROOT, data)


@dataclass
class FeatureResult:
    """Descriptors of one (net, Q, shard): keys and labels in shard order, (N, D) float32."""

    keys: list[str]
    labels: np.ndarray
    features: np.ndarray
    seconds: float = 0.0


def describe_images(model: VGG, decoder: EvalDecoder, images: Sequence[bytes], heights: Sequence[int],
                    widths: Sequence[int], keys: Sequence[str], q: int, flip: bool = True,
                    batch_size: int = 32) -> np.ndarray:
    """(N, D) float32 descriptors of encoded images at scale ``q``; batches hold one rescaled shape (no padding)."""
    out = np.empty((len(images), model.fc_width), np.float32)
    with torch.inference_mode():
        for idx in shape_batches(heights, widths, q, batch_size):
            decoded = decoder([images[i] for i in idx], q, keys=[keys[i] for i in idx])
            # The stored size predicts the decoded one; regroup by the real shapes all the same, never pad.
            for members, batch in stack_by_shape(decoded):
                batch = batch.contiguous(memory_format=torch.channels_last)
                out[[idx[j] for j in members]] = dense_descriptors(model, batch, flip).float().cpu().numpy()
    return out


def describe_shard(card_doc: dict, state: dict[str, torch.Tensor], shard_uri: str, q: int, decoder: str = "auto",
                   batch_size: int = 32, endpoint: str | None = None) -> FeatureResult:
    """One Ray task: read the shard, build the net on this worker's device, describe every image at Q."""
    start = time.perf_counter()
    card, model, decode, rows = prepare_unit(card_doc, state, shard_uri, None, decoder, endpoint)
    feats = describe_images(model, decode, rows["image"], rows["height"], rows["width"], rows["key"], q, card.flip,
                            batch_size)
    return FeatureResult(rows["key"], np.asarray(rows["label"], np.int32), feats, time.perf_counter() - start)
