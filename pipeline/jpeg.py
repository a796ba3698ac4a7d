"""Encoded images as both decode backends see them (``pipeline.decode_cpu``, ``pipeline.decode_dali``).

The bytes of an item without copying them, its size from the JPEG frame header (or PIL's header parse), one-line
errors that name the item, and the two steps every backend applies to drawn ``vgg.augment`` params: the check that
they fit the image, and the colour offsets. ``pipeline.decode`` is the factory that picks a backend; the backends
import this module, never the factory.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Union

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from vgg.augment import AugmentParams, colour_shift, rescaled_size

Encoded = Union[bytes, bytearray, memoryview, np.ndarray]
"""One encoded image: its file bytes (a uint8 numpy array, as Arrow/Ray Data may hand them over, works too)."""


class DecodeError(ValueError):
    """An image in a batch could not be decoded; the one-line message names it (index, and key when given)."""


def describe(index: int, keys: Sequence[str] | None) -> str:
    """How an error names an item: its index in the batch, and its key when the caller gave keys."""
    return f"item {index}" + (f" (key {keys[index]!r})" if keys is not None else "")


def decode_error(index: int, keys: Sequence[str] | None, error: BaseException,
                 what: str = "cannot decode image") -> DecodeError:
    """The one-line DecodeError for an item, with the decoder's own reason."""
    reason = " ".join(str(error).split())
    reason = re.sub(r"^\w+, \S+\.cpp:\d+, ", "", reason)  # torchvision prefixes its C++ source location
    reason = re.sub(r" <[^<>]* at 0x[0-9a-f]+>", "", reason)  # PIL names its in-memory file object
    return DecodeError(f"{describe(index, keys)}: {what} ({type(error).__name__}: {reason})")


def as_buffer(data: Encoded) -> bytes | bytearray | memoryview:
    """The encoded bytes of one item without copying them (numpy arrays become a memoryview)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise TypeError(f"encoded images must be bytes or 1-D uint8 arrays, got {data.dtype} {data.shape}")
        return memoryview(np.ascontiguousarray(data))
    return data


def open_image(data: Encoded, index: int, keys: Sequence[str] | None) -> Image.Image:
    """Parse an image's header with PIL (no pixel decode yet), or raise a DecodeError naming the item."""
    try:
        return Image.open(io.BytesIO(as_buffer(data)))
    except Exception as e:  # PIL raises several types for unreadable input; all mean "not an image"
        raise decode_error(index, keys, e, "not a decodable image") from e


# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); C4, C8 and CC are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: Encoded) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header by walking its markers; None if it is not a plain JPEG."""
    buf = as_buffer(data)
    if bytes(buf[:2]) != b"\xff\xd8":
        return None
    # A short walk over the segments before the frame (APPn, DQT, DHT): microseconds, where opening the file with PIL
    # costs tens of them -- it matters on the GPU path, where the header is all the host looks at.
    pos, end = 2, len(buf)
    while pos + 9 <= end:
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF:
            height, width = (buf[pos + 5] << 8) | buf[pos + 6], (buf[pos + 7] << 8) | buf[pos + 8]
            return (height, width) if height and width else None  # height 0: defined later (DNL); let PIL decide
        if marker == 0xDA or 0xD0 <= marker <= 0xD9:  # scan data or a stand-alone marker before any frame
            return None
        pos += 2 + ((buf[pos + 2] << 8) | buf[pos + 3])
    return None


def image_size(data: Encoded, index: int = 0, keys: Sequence[str] | None = None) -> tuple[int, int]:
    """(height, width) from the header alone, or a DecodeError naming the item."""
    size = jpeg_size(data)
    if size is not None:
        return size
    with open_image(data, index, keys) as image:
        width, height = image.size
    return height, width


def check_params(height: int, width: int, params: AugmentParams, crop: int, index: int,
                 keys: Sequence[str] | None) -> tuple[int, int]:
    """The rescaled (h, w); raise one line if the params do not describe a crop inside this image."""
    h, w = rescaled_size(height, width, params.scale)
    if params.scale < crop or not (0 <= params.top <= h - crop and 0 <= params.left <= w - crop):
        raise ValueError(
            f"{describe(index, keys)}: params {params} do not fit a {crop} crop of a {height}x{width} image "
            f"rescaled to {h}x{w} (were they drawn for another image size?)"
        )
    return h, w


def colour_offsets(params: Sequence[AugmentParams], eigval: ArrayLike, eigvec: ArrayLike,
                   mean: ArrayLike) -> np.ndarray:
    """Per-image additive offset on the 0-255 scale, PCA colour shift minus mean RGB: (N, 3) float64."""
    shifts = np.array([colour_shift(eigval, eigvec, p.alphas) for p in params], np.float64).reshape(-1, 3)
    return shifts - np.asarray(mean, np.float64)

