"""The paper's training and test transforms as small pure functions: the one reference every backend is checked against.

Training (Sec. 3.1): isotropic rescale so the shorter side is S (fixed, or drawn per image from U[Smin, Smax] as an
integer, inclusive), a random crop of the crop size, a horizontal flip with p=0.5, AlexNet's PCA colour shift
(alpha ~ N(0, 0.1) per eigenvector, per image, on the 0-255 scale) and subtraction of the training set's mean RGB.
Test (Sec. 3.2): isotropic rescale so the shorter side is Q, no crop, mean subtraction.

Parameters are drawn once per image (``sample_params``) from a generator seeded by the caller, then applied by a
backend; the reference applies them with torch ops in float64 so that backends can be measured against it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vgg.paper import PCA_STD

PIXEL_MAX = 255.0  # colour statistics are stored on the 0-255 scale


@dataclass(frozen=True)
class AugmentParams:
    """Everything random about one training image: scale S, crop position (in the rescaled image), flip, PCA alphas."""

    scale: int
    top: int
    left: int
    flip: bool
    alphas: tuple[float, float, float]


@dataclass(frozen=True)
class Box:
    """A window in original-image pixels (float, half-open): what the crop covers before rescaling."""

    top: float
    left: float
    height: float
    width: float


def rescaled_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(h, w) after an isotropic rescale that makes the shorter side ``shorter``; the longer side is rounded.

    The one definition of a rescaled size: training's S, evaluation's Q and ``pipeline.prepare``'s resize. The longer
    side is the quotient of exact integers rounded half to even, never below ``shorter`` for positive sizes (so the
    ``max`` changes no result: tests/vgg/test_augment.py checks it on edge cases).
    """
    if height <= width:
        return shorter, max(shorter, int(round(width * shorter / height)))
    return max(shorter, int(round(height * shorter / width))), shorter


def check_scales(smin: int, smax: int, crop: int) -> None:
    """Raise one clear line unless crop <= Smin <= Smax."""
    if not (isinstance(smin, int) and isinstance(smax, int)) or not crop <= smin <= smax:
        raise ValueError(f"training scales need crop <= Smin <= Smax (integers), got crop {crop}, S in [{smin}, {smax}]")


def seed_for(seed: int, epoch: int, key: str) -> int:
    """A 64-bit seed for one image in one epoch: the same draws whichever worker sees it, in whatever order."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def sample_params(
    rng: np.random.Generator,
    height: int,
    width: int,
    smin: int,
    smax: int,
    crop: int,
    flip: bool = True,
    pca_std: float = PCA_STD,
) -> AugmentParams:
    """Draw S ~ U{Smin..Smax}, a uniform crop position in the rescaled image, a fair flip, and three PCA alphas."""
    check_scales(smin, smax, crop)
    scale = int(rng.integers(smin, smax + 1))
    h, w = rescaled_size(height, width, scale)
    top = int(rng.integers(0, h - crop + 1))
    left = int(rng.integers(0, w - crop + 1))
    flipped = bool(rng.random() < 0.5) if flip else False
    alphas = tuple(float(a) for a in rng.normal(0.0, pca_std, size=3)) if pca_std > 0 else (0.0, 0.0, 0.0)
    return AugmentParams(scale, top, left, flipped, alphas)  # type: ignore[arg-type]


def crop_box(height: int, width: int, params: AugmentParams, crop: int) -> Box:
    """The crop's window in original pixels: a square of side crop * short / S (for ROI / crop-fused decoding)."""
    h, w = rescaled_size(height, width, params.scale)
    sy, sx = height / h, width / w  # original pixels per rescaled pixel, per axis (rounding makes them differ slightly)
    return Box(params.top * sy, params.left * sx, crop * sy, crop * sx)


def colour_shift(eigval: np.ndarray, eigvec: np.ndarray, alphas: tuple[float, float, float]) -> np.ndarray:
    """AlexNet's PCA shift added to every pixel, on the 0-255 scale: sum_i alpha_i * lambda_i * p_i.

    ``eigval``/``eigvec`` are those of the RGB covariance measured on the 0-255 scale (as the manifest stores them;
    eigvec columns are the p_i). The formula is not scale-free -- lambda is a variance, the shift a pixel value -- and
    it gives the intended few-percent shift with pixels in [0, 1] (lambda_1 = 0.2175 on ImageNet, fb.resnet.torch),
    so it is applied on that scale and the shift brought back to 0-255: alpha * (lambda / 255^2) * 255 = alpha *
    lambda / 255 (ImageNet's lambda_1 / 255 = 55.46, Caffe's lighting constant).
    """
    scaled = np.asarray(alphas, dtype=np.float64) * np.asarray(eigval, dtype=np.float64) / PIXEL_MAX
    return np.asarray(eigvec, dtype=np.float64) @ scaled


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a (C, H, W) float image (the reference filter)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def normalise(image: torch.Tensor, mean: np.ndarray, std: np.ndarray | None = None) -> torch.Tensor:
    """Subtract the mean RGB (the paper's only preprocessing); divide by std only where weights expect it."""
    out = image - torch.as_tensor(np.asarray(mean), dtype=image.dtype).view(3, 1, 1)
    if std is not None:
        out = out / torch.as_tensor(np.asarray(std), dtype=image.dtype).view(3, 1, 1)
    return out


def to_chw(image: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """An (H, W, 3) uint8 RGB array as a (3, H, W) float tensor on the 0-255 scale."""
    t = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image
    return t.permute(2, 0, 1).to(dtype)


def train_reference(
    image: np.ndarray,
    params: AugmentParams,
    crop: int,
    mean: np.ndarray,
    eigval: np.ndarray,
    eigvec: np.ndarray,
    std: np.ndarray | None = None,
) -> torch.Tensor:
    """The training transform of one decoded (H, W, 3) uint8 RGB image: (3, crop, crop) float64."""
    x = to_chw(image)
    h, w = rescaled_size(x.shape[1], x.shape[2], params.scale)
    x = resize(x, (h, w))[:, params.top : params.top + crop, params.left : params.left + crop]
    if params.flip:
        x = x.flip(-1)
    x = x + torch.as_tensor(colour_shift(eigval, eigvec, params.alphas)).view(3, 1, 1)
    return normalise(x, mean, std)


def eval_reference(image: np.ndarray, q: int, mean: np.ndarray, std: np.ndarray | None = None) -> torch.Tensor:
    """The test transform of one decoded image: shorter side to Q, no crop, mean subtraction: (3, h, w) float64."""
    x = to_chw(image)
    return normalise(resize(x, rescaled_size(x.shape[1], x.shape[2], q)), mean, std)
