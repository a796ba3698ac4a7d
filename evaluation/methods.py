"""The paper's test-time methods (Sec. 3.2) on rescaled images, and the arithmetic that combines their posteriors.

Every function here is pure: images in (already rescaled to Q and mean-subtracted), soft-max posteriors out.

- dense: the fully-convolutional net on the whole image, class-score map spatially averaged, soft-max; averaged with
  the same for the horizontally flipped image.
- multi-crop: a 5x5 regular grid of crop x crop windows over the rescaled image, each also flipped: 50 crops per
  scale, soft-max posteriors averaged.
- combinations (multi-crop & dense, multi-scale, fusion of nets): plain averages of posteriors.

Images of one batch must share a shape: dense evaluation pads nothing, so an image is never mixed with padding (zeros
at its border would change its score map), and the crop grid is a function of the shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vgg.protocol import GRID, grid_crops

DENSE, MULTICROP = "dense", "multicrop"
METHODS = (DENSE, MULTICROP)
COMBINED = "multicrop+dense"  # the posterior average of the two (Table 5's "multi-crop & dense")
DENSE_NOFLIP = "dense_noflip"  # dense on the image alone: stored beside dense, as the trainer's validation sees it
# What each method stores per image: dense keeps its unflipped half too (it costs nothing more).
VIEWS: dict[str, tuple[str, ...]] = {DENSE: (DENSE, DENSE_NOFLIP), MULTICROP: (MULTICROP,)}
LABELS = {DENSE: "dense", MULTICROP: "multi-crop", COMBINED: "multi-crop & dense", DENSE_NOFLIP: "dense (no flip)"}
CROPS_PER_SCALE = GRID * GRID * 2  # 50: Sec. 3.2


def dense_posteriors(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-max of the spatially averaged score map of (N, 3, h, w) images, and of their mirror images: 2 x (N, C)."""
    n = images.shape[0]
    # One forward for the image and its mirror: twice the batch, half the kernel launches.
    scores = model.forward_dense(torch.cat([images, images.flip(3)])).mean(dim=(2, 3))
    probs = scores.softmax(dim=1)
    return probs[:n], probs[n:]


def grid_crop_batch(images: torch.Tensor, crop: int, n: int = GRID) -> torch.Tensor:
    """The n x n grid of crop x crop windows of each (N, 3, h, w) image: (N, n*n, 3, crop, crop), row-major."""
    h, w = images.shape[-2:]
    return torch.stack([images[:, :, t : t + crop, l : l + crop] for t, l in grid_crops(h, w, crop, n)], dim=1)


def multicrop_posteriors(model: nn.Module, images: torch.Tensor, crop: int, max_crops: int = 250,
                         n: int = GRID) -> torch.Tensor:
    """Average soft-max over the n x n grid crops and their mirror images (50 per image at n=5): (N, C).

    ``max_crops`` bounds one forward pass (memory); the crops of a few images go through together.
    """
    per_image = 2 * n * n
    step = max(1, max_crops // per_image)
    out = []
    for start in range(0, images.shape[0], step):
        crops = grid_crop_batch(images[start : start + step], crop, n).flatten(0, 1)
        probs = model(torch.cat([crops, crops.flip(3)])).softmax(dim=1)
        out.append(probs.view(2, -1, n * n, probs.shape[1]).mean(dim=(0, 2)))
    return torch.cat(out)


def evaluate_batch(model: nn.Module, images: torch.Tensor, crop: int, methods: Sequence[str],
                   max_crops: int = 250) -> dict[str, torch.Tensor]:
    """Posteriors of every view the ``methods`` store, for one batch of equally sized rescaled images."""
    out: dict[str, torch.Tensor] = {}
    if DENSE in methods:
        plain, mirrored = dense_posteriors(model, images)
        out[DENSE], out[DENSE_NOFLIP] = 0.5 * (plain + mirrored), plain
    if MULTICROP in methods:
        out[MULTICROP] = multicrop_posteriors(model, images, crop, max_crops)
    return out


def average(posteriors: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of equally shaped (N, C) posteriors, in float64: multi-scale, multi-crop & dense and fusion alike."""
    if not posteriors:
        raise ValueError("nothing to average")
    shapes = {p.shape for p in posteriors}
    if len(shapes) != 1:
        raise ValueError(f"posteriors of different shapes cannot be averaged: {sorted(shapes)}")
    return np.mean(np.stack([np.asarray(p, np.float64) for p in posteriors]), axis=0)


def topk_errors(probs: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k error for each k (k capped at the number of classes): the fraction of images whose label is not among
    the k most probable classes."""
    labels = np.asarray(labels)
    if probs.shape[0] != labels.shape[0] or probs.shape[0] == 0:
        raise ValueError(f"need as many labels as posteriors (at least one), got {labels.shape[0]} and {probs.shape[0]}")
    # Rank of the true class = how many classes score strictly higher; ties count in the label's favour.
    true = np.take_along_axis(probs, labels[:, None].astype(np.int64), axis=1)
    rank = (probs > true).sum(axis=1)
    return {k: float(np.mean(rank >= min(k, probs.shape[1]))) for k in ks}
