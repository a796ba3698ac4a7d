"""Synthetic JPEGs for the decode tests and the decode benchmark: natural-looking images made on the spot.

Natural images have most of their energy at coarse scales, soft-edged objects and sensor noise; pure noise is a poor
stand-in (every resize filter disagrees on it, and it decodes slower than any photograph). ``natural`` builds a
1/f-like colour field from upsampled random octaves, draws a few blurred discs and boxes on it, and adds fine texture
and noise; ``texture`` and ``noise`` set how much high-frequency content there is (parity tests use little, the
benchmark uses enough to make JPEG sizes and decode times photograph-like).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _octave(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    """A random field with about ``cells`` features along the longer side, upsampled bicubically: (h, w, channels)."""
    long = max(h, w)
    gh, gw = max(2, cells * h // long + 1), max(2, cells * w // long + 1)
    small = rng.integers(0, 256, size=(gh, gw, channels), dtype=np.uint8)
    image = Image.fromarray(small[..., 0] if channels == 1 else small).resize((w, h), Image.BICUBIC)
    return np.asarray(image, np.float32).reshape(h, w, channels)


def natural(rng: np.random.Generator, h: int, w: int, texture: float = 8.0, noise: float = 3.0) -> np.ndarray:
    """A natural-looking (h, w, 3) uint8 RGB image: smooth colour field, soft shapes, fine texture and noise."""
    x = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((3, 1.0), (10, 0.6), (40, 0.35)):
        # Mostly shared across channels (luminance), partly per channel (chroma), as in photographs.
        x += amp * (0.7 * _octave(rng, h, w, cells, 1) + 0.3 * _octave(rng, h, w, cells, 3))
    x = (x - x.mean()) / (x.std() + 1e-6) * 50 + 115
    image = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(max(1, min(h, w) // 20), max(2, min(h, w) // 5)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((cx - r, cy - r, cx + r, cy + r), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(max(1.0, min(h, w) / 400)))
    out = np.asarray(image, np.float32)
    if texture > 0:
        out = out + texture / 128 * (_octave(rng, h, w, max(h, w) // 3, 1) - 127.5)
    if noise > 0:
        out = out + rng.standard_normal((h, w, 3), dtype=np.float32) * noise
    return np.clip(out, 0, 255).astype(np.uint8)


def ramp(h: int, w: int) -> np.ndarray:
    """A horizontal ramp, value = column index (mod 256) in every channel: a crop's first column reveals its offset."""
    row = (np.arange(w) % 256).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(row[None, :, None], (h, w, 3)))


def constant(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    """A constant (h, w, 3) image."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(rgb, np.uint8), (h, w, 3)))


def encode(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an (h, w, 3) or (h, w) uint8 image (libjpeg's default 4:2:0 chroma subsampling)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_reference(data: bytes) -> np.ndarray:
    """The reference's input: the JPEG decoded by PIL to an (h, w, 3) uint8 RGB array."""
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))
