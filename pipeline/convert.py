"""One source file -> the image a shard stores (validated, RGB JPEG bytes, resized on request); colour statistics.

``convert_image`` is the whole per-image policy of ``pipeline.prepare`` (its module docstring says why the
defaults are what they are): ordinary RGB JPEGs are kept byte for byte, everything else that is an image becomes an
RGB JPEG, and what is not usable raises ``SkipFile`` with the reason that the manifest lists.
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from vgg.augment import rescaled_size

# Bump when convert_image's output for the same input changes: shards written before then are rebuilt.
# 2: 16-bit grey images are scaled to 8 bits instead of clipped (almost white).
# Not bumped when the resize target became vgg.augment.rescaled_size: the sizes are the same except on exact
# half-pixel ties (none at --max-shorter-side 256 or 512), where a shard written before keeps a 1-pixel-shorter side.
CONVERTER_VERSION = 2
# Images declaring more pixels are skipped unread (see pipeline.prepare's module docstring for why 64).
MAX_MEGAPIXELS = 64.0
# Pillow's modes of 16-bit grey ("I" is how older Pillows opened 16-bit PNGs; its range is taken to be 16 bits too).
GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class SkipFile(Exception):
    """A source file that cannot become a training image; the message is the reason."""


@dataclass(frozen=True)
class Converted:
    """A stored image: RGB JPEG bytes and their size; ``action`` is unchanged, converted or resized."""

    image: bytes
    height: int
    width: int
    action: str


def grey16_to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit grey image as 8-bit grey ("L"), scaled by 255/65535 (Pillow's convert clips it at 255 instead)."""
    values = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def convert_image(
    data: bytes, max_shorter_side: int | None = None, quality: int = 95, max_megapixels: float = MAX_MEGAPIXELS
) -> Converted:
    """Validate one source file and return it as an RGB JPEG; raises SkipFile with the reason if it is unusable.

    An RGB JPEG that needs no resize is returned byte for byte. Everything else (CMYK or grayscale JPEG, 16-bit
    grey, PNG or other formats, images over ``max_shorter_side``) is decoded, converted to RGB and re-encoded.
    An image whose header declares more than ``max_megapixels`` million pixels is skipped before any decoding.
    EXIF orientation is ignored: the pixels keep their stored order (``pipeline.prepare``'s docstring says why).
    """
    if not data:
        raise SkipFile("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; the size is checked below against ours, before any decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except UnidentifiedImageError:
        raise SkipFile("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise SkipFile(f"declared size too large, not decoded ({' '.join(str(exc).split())})") from None
    except Exception as exc:  # PIL raises many types for broken headers
        raise SkipFile(f"unreadable image header ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    width, height = img.size
    if width * height > max_megapixels * 1e6:
        raise SkipFile(
            f"declared size {width}x{height} ({width * height / 1e6:.1f} megapixels) is over --max-megapixels "
            f"{max_megapixels:g}: not decoded"
        )
    target = None
    if max_shorter_side and min(width, height) > max_shorter_side:
        new_height, new_width = rescaled_size(height, width, max_shorter_side)
        target = (new_width, new_height)  # PIL's order
        if img.format == "JPEG":
            # DCT-domain downscale to no less than twice the target, then Lanczos for the rest (as PIL's thumbnail).
            img.draft(None, (2 * target[0], 2 * target[1]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-with-transparency and similar notes are not errors
            img.load()
    except Image.DecompressionBombError as exc:
        raise SkipFile(f"too large to decode safely ({exc})") from None
    except Exception as exc:
        raise SkipFile(
            f"truncated or corrupt image data ({type(exc).__name__}: {' '.join(str(exc).split())})"
        ) from None
    if img.format == "JPEG" and img.mode == "RGB" and target is None:
        return Converted(data, height, width, "unchanged")
    if img.mode in GREY16_MODES:
        img = grey16_to_8bit(img)
    rgb = img.convert("RGB")
    action = "converted"
    if target is not None:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS)
        action = "resized"
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, subsampling=0)  # 4:4:4: no chroma loss on re-encode
    return Converted(out.getvalue(), rgb.height, rgb.width, action)


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def sample_pixels(rgb: np.ndarray, key: str, n: int) -> np.ndarray:
    """``n`` pixels of an (H, W, 3) image drawn with replacement by a generator seeded from ``key``: (n, 3) int64."""
    flat = rgb.reshape(-1, 3)
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return flat[rng.integers(0, flat.shape[0], size=n)].astype(np.int64)


def colour_stats(count: int, total: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, eigenvalues (descending) and eigenvectors (columns) of the RGB covariance from exact integer sums."""
    mean = total / count
    cov = outer / count - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    # Eigenvectors are defined up to sign: fix it (largest component positive) so every run writes the same numbers.
    for j in range(3):
        if eigvec[np.argmax(np.abs(eigvec[:, j])), j] < 0:
            eigvec[:, j] = -eigvec[:, j]
    return mean, eigval, eigvec
