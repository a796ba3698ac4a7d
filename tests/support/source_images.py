"""Source files with the quirks prepare must handle: plain JPEGs, 16-bit grey PNGs, lying headers, EXIF rotation."""

from __future__ import annotations

import io
import struct

import numpy as np
from imagenet_fixture import _jpeg as jpeg  # one encoder for every test image
from PIL import Image


def png16(grey: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16)).save(out, format="PNG")
    return out.getvalue()


def declaring(width: int, height: int) -> bytes:
    """A valid 64x64 JPEG of 4 KB whose SOF0 header is patched to declare width x height."""
    data = bytearray(jpeg(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), then height and width, big-endian
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def exif_rotated_jpeg(mode: str = "RGB") -> bytes:
    """A 40x60 (h x w) JPEG, left half dark, whose EXIF orientation 6 says "turn 90 degrees clockwise to display"."""
    rgb = np.full((40, 60, 3), 220, np.uint8)
    rgb[:, :30] = 20
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()

