"""The paper's test-time evaluation (Sec. 3.2) as torch functions: dense and multi-crop posteriors, shape groups.

Images come in already rescaled to the test scale Q and mean-subtracted; soft-max posteriors go out.

- dense: the fully-convolutional net on the whole image, its class-score map spatially averaged, soft-max; with flip,
  averaged with the same for the horizontally flipped image.
- descriptors (Appendix B): the dense net without its last layer, its FC7 map averaged over space and over the flip.
- multi-crop: a 5x5 regular grid of crop x crop windows over the image, each also flipped (50 crops per scale;
  25 without the flip, for nets trained without flips), soft-max posteriors averaged.

Training's validation and the evaluation sweep both call these, so the two numbers are the same computation.
Images of one batch share a shape: dense evaluation pads nothing (zeros at an image's border would change its score
map), and the crop grid is a function of the shape; ``group_by_shape`` and ``stack_by_shape`` make such batches.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import torch
from torch import nn

from vgg.protocol import GRID, grid_crops


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is in a half type (bf16 autocast): the spatial mean and the soft-max lose digits in
    half precision; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _dense_softmax(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Soft-max of the spatially averaged class-score map of (N, 3, h, w) images: (N, C)."""
    return _at_least_fp32(model.forward_dense(images)).mean(dim=(2, 3)).softmax(dim=1)


def dense_views(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``dense_posteriors(flip=False)`` of (N, 3, h, w) images and of their mirror images: (N, C) each."""
    n = images.shape[0]
    # One forward for the image and its mirror: twice the batch, half the kernel launches.
    probs = _dense_softmax(model, torch.cat([images, images.flip(3)]))
    return probs[:n], probs[n:]


def flip_average(plain: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """The posteriors of images and of their mirror images, averaged (Sec. 3.2)."""
    return 0.5 * (plain + mirrored)


def dense_posteriors(model: nn.Module, images: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """Dense evaluation of (N, 3, h, w) images: (N, C) posteriors, averaged over the horizontal flip when ``flip``."""
    return flip_average(*dense_views(model, images)) if flip else _dense_softmax(model, images)


def dense_descriptors(model: nn.Module, images: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """Appendix B's descriptors of (N, 3, h, w) images: the dense FC7 map averaged over space, and with ``flip`` over
    the image and its mirror image: (N, fc_width)."""
    if not flip:
        return _at_least_fp32(model.forward_dense_fc7(images)).mean(dim=(2, 3))
    n = images.shape[0]
    pooled = _at_least_fp32(model.forward_dense_fc7(torch.cat([images, images.flip(3)]))).mean(dim=(2, 3))
    return flip_average(pooled[:n], pooled[n:])


def grid_crop_batch(images: torch.Tensor, crop: int, n: int = GRID) -> torch.Tensor:
    """The n x n grid of crop x crop windows of each (N, 3, h, w) image: (N, n*n, 3, crop, crop), row-major."""
    h, w = images.shape[-2:]
    return torch.stack([images[:, :, t : t + crop, l : l + crop] for t, l in grid_crops(h, w, crop, n)], dim=1)


def multicrop_posteriors(model: nn.Module, images: torch.Tensor, crop: int, max_crops: int = 250,
                         n: int = GRID, flip: bool = True) -> torch.Tensor:
    """Average soft-max over the n x n grid crops and, when ``flip``, their mirror images (50 per image at n=5;
    25 without the mirrors): (N, C).

    ``max_crops`` bounds one forward pass (memory); the crops of a few images go through together.
    """
    views = 2 if flip else 1
    step = max(1, max_crops // (views * n * n))
    out = []
    for start in range(0, images.shape[0], step):
        crops = grid_crop_batch(images[start : start + step], crop, n).flatten(0, 1)
        probs = _at_least_fp32(model(torch.cat([crops, crops.flip(3)]) if flip else crops)).softmax(dim=1)
        out.append(probs.view(views, -1, n * n, probs.shape[1]).mean(dim=(0, 2)))
    return torch.cat(out)


def group_by_shape(shapes: Sequence[Hashable]) -> list[list[int]]:
    """Indices of equal shapes together, groups in order of first appearance: every index in exactly one group."""
    groups: dict[Hashable, list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    return list(groups.values())


def stack_by_shape(images: Sequence[torch.Tensor]) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, stacked batch) for each group of equally shaped images: images of any sizes in batches, never padded."""
    for idx in group_by_shape([tuple(x.shape) for x in images]):
        yield idx, torch.stack([images[i] for i in idx])
