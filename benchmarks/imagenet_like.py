"""ImageNet-like inputs shared by the benchmarks: JPEGs calibrated to ImageNet's bytes per pixel, its statistics, and
torchvision's reference training recipe (the standard alternative the benchmarks compare against)."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2 as T

# ImageNet statistics on the 0-255 scale: mean, std, and AlexNet's PCA of the RGB covariance.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
EIGVAL = (55.46, 4.794, 1.148)
EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))

# Typical ImageNet training-image shapes (h, w), cycled through.
SHAPES = [(375, 500), (500, 375), (375, 500), (333, 500), (500, 400)]
# Decode time follows the entropy-coded bytes, so the images are calibrated by bytes per pixel at quality 90.
# ImageNet's training JPEGs average ~110 KB at ~470x390 (~0.6 B/px): this detail matches that (~107 KB at 500x375).
DETAIL = {"texture": 100.0, "noise": 14.0}
QUALITY = 90


def jpeg(rng: np.random.Generator, h: int, w: int, detail: dict[str, float] = DETAIL) -> bytes:
    """One natural-looking h x w JPEG (quality 90) with ImageNet's bytes per pixel (or ``detail``'s)."""
    # tests/support, which each benchmark script puts on sys.path; imported here so that processes that only need
    # the statistics (Ray workers running a script's functions) import this module without it.
    import jpeg_samples

    return jpeg_samples.encode(jpeg_samples.natural(rng, h, w, **detail), quality=QUALITY)


def torchvision_recipe(smin: int, smax: int, crop: int, mean=MEAN, std=STD):
    """torchvision's reference training recipe on PIL images: shorter side to S ~ U[smin, smax], RandomCrop(crop),
    flip, PILToTensor, to float32, Normalize."""
    return T.Compose([T.RandomResize(smin, smax + 1, antialias=True), T.RandomCrop(crop), T.RandomHorizontalFlip(),
                      T.PILToTensor(), T.ToDtype(torch.float32), T.Normalize(list(mean), list(std))])
