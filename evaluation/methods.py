"""The sweep's methods and stored views, and the arithmetic that combines their posteriors.

The methods themselves (dense with its flip, the 5x5x2 crops; Sec. 3.2) are ``vgg.evaluate``'s, the functions
training's validation calls too. What the sweep adds:

- the views it stores per image: dense flip-averaged and dense alone (as validation sees it without ``val_flip``),
  multi-crop over 50 crops per scale (5x5 grid x 2 flips) or over the 25 of the grid alone;
- which views a net gets: flips at test time only for a net trained with them (its card's ``flip``), unless the
  sweep's ``--flip`` says otherwise: the mirror image of a digit is another digit, and a net that never saw mirrors
  scores them as such;
- combinations (multi-crop & dense, multi-scale, fusion of nets): plain averages of posteriors; top-k errors.

Images of one batch must share a shape (``vgg.evaluate.stack_by_shape``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from vgg.evaluate import dense_posteriors, dense_views, flip_average, multicrop_posteriors
from vgg.protocol import GRID

DENSE, MULTICROP = "dense", "multicrop"
METHODS = (DENSE, MULTICROP)
COMBINED = "multicrop+dense"  # the posterior average of the two (Table 5's "multi-crop & dense")
DENSE_NOFLIP = "dense_noflip"  # dense on the image alone: stored beside dense, as the trainer's validation sees it
MULTICROP_NOFLIP = "multicrop_noflip"  # the 25 crops of the grid without their mirror images
FLIPS = ("auto", "on", "off")  # --flip: as the net was trained (its card), always (the paper's), never
CROPS_PER_SCALE = GRID * GRID * 2  # 50: Sec. 3.2


def views_of(methods: Sequence[str], flip: bool = True) -> tuple[str, ...]:
    """Every stored view the methods produce; dense with flips keeps its unflipped half too (it costs nothing more)."""
    out: list[str] = []
    if DENSE in methods:
        out += [DENSE, DENSE_NOFLIP] if flip else [DENSE_NOFLIP]
    if MULTICROP in methods:
        out.append(MULTICROP if flip else MULTICROP_NOFLIP)
    return tuple(out)


def view_of(method: str, flip: bool) -> str:
    """The stored view that is a method's posteriors (``dense`` or ``multicrop``) with or without flips."""
    return {DENSE: DENSE if flip else DENSE_NOFLIP, MULTICROP: MULTICROP if flip else MULTICROP_NOFLIP}[method]


def uses_flip(setting: str, trained_with_flip: bool) -> bool:
    """Whether a net is evaluated with flips: ``--flip auto`` follows its training, ``on`` / ``off`` decide."""
    return trained_with_flip if setting == "auto" else setting == "on"


def label(method: str, flip: bool) -> str:
    """How tables name a method: dense says whether it was flip-averaged, multi-crop how many crops per scale."""
    if method == MULTICROP:
        return f"multi-crop, {CROPS_PER_SCALE if flip else CROPS_PER_SCALE // 2} crops/scale"
    base = {DENSE: "dense", COMBINED: "multi-crop & dense"}[method]
    return f"{base}, flip-averaged" if flip else base


def short_name(method: str) -> str:
    """A method as MLflow run names and the plot's legend give it (the flip setting is a param beside it)."""
    return {DENSE: "dense", MULTICROP: "multi-crop", COMBINED: "multi-crop & dense"}[method]


def evaluate_batch(model: nn.Module, images: torch.Tensor, crop: int, methods: Sequence[str],
                   max_crops: int = 250, flip: bool = True) -> dict[str, torch.Tensor]:
    """Posteriors of every view the ``methods`` store (``views_of``), for one batch of equally sized rescaled
    images; without ``flip`` no mirror image is evaluated."""
    out: dict[str, torch.Tensor] = {}
    if DENSE in methods:
        if flip:
            plain, mirrored = dense_views(model, images)
            out[DENSE], out[DENSE_NOFLIP] = flip_average(plain, mirrored), plain
        else:
            out[DENSE_NOFLIP] = dense_posteriors(model, images, flip=False)
    if MULTICROP in methods:
        out[view_of(MULTICROP, flip)] = multicrop_posteriors(model, images, crop, max_crops, flip=flip)
    return out


class RunningMean:
    """The float64 mean of equally shaped (N, C) posteriors added one at a time: one running sum in memory, each
    input let go once added. The sum runs in input order, as ``np.mean`` over the stacked inputs adds them, so the
    numbers are the same bit for bit."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, posteriors: np.ndarray) -> None:
        """Add one (N, C) array."""
        if self.total is None:
            self.total = np.array(posteriors, np.float64)
        elif posteriors.shape != self.total.shape:
            shapes = sorted({self.total.shape, posteriors.shape})
            raise ValueError(f"posteriors of different shapes cannot be averaged: {shapes}")
        else:
            self.total += posteriors
        self.count += 1

    def result(self) -> np.ndarray:
        """The mean of what was added (divided in place: the running sum becomes the result and the mean is reset)."""
        if self.total is None:
            raise ValueError("nothing to average")
        total, self.total = self.total, None
        total /= self.count
        self.count = 0
        return total


def average(posteriors: Iterable[np.ndarray]) -> np.ndarray:
    """The mean of equally shaped (N, C) posteriors, in float64: multi-scale, multi-crop & dense and fusion alike;
    a generator is averaged in the memory of two inputs (``RunningMean``)."""
    mean = RunningMean()
    for p in posteriors:
        mean.add(p)
        del p  # before the next one is made
    return mean.result()


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
