"""CPU backend without DALI: libjpeg-turbo decode of what the crop needs, then torch's uint8 antialiased resampling.

Per image, single-threaded (the data pipeline runs one decoder per core):

1. Decode only the crop's window. ``pipeline._jpegwindow`` (a small C extension over the system's libjpeg-turbo,
   built at install time) decodes the rows and columns that the crop's resample reads: libjpeg-turbo's
   ``jpeg_crop_scanline`` limits the inverse DCT, upsampling and colour conversion to the window's columns,
   ``jpeg_skip_scanlines`` skips them for the rows above it (entropy decoding only), and the decode stops after its
   bottom row. The pixels equal a whole decode's (tests/pipeline/test_jpegwindow.py); on ImageNet-sized photos this
   decodes ~15-60% of the pixels. When the window is at least twice the crop in both directions (large photos),
   libjpeg also downscales by 1/2, 1/4 or 1/8 in the DCT domain, for a fraction of the decode time, and the residual
   downscale stays >= 1x. Where the extension is not built, or does not apply (CMYK, corrupt data), the fallback
   decodes whole rows: just the top rows down to the window through PIL's JPEG decoder when those are clearly fewer
   than all (``PARTIAL_DECODE_MAX``), else the whole image with ``torchvision.io.decode_jpeg`` (~15% faster per row
   than PIL), with PIL's ``draft`` for the DCT downscale. Non-JPEG and non-RGB files, and torchvision versions
   without image codecs, go through PIL.
2. Resample onto the reference's own pixel grid. The reference rescales the whole image to S and crops; torch's
   resampler puts output pixel i at input (i + 0.5) * scale - 0.5, so an input starting at pixel 0 is the only way to
   land on that grid exactly (a window starting mid-image would be off by a fraction of a pixel). So only the top-left
   part of the image that reaches the crop's far corner is resampled, with the reference's scale factor and filter
   (antialiased bilinear), and the crop is sliced out. The pixels above and left of the decoded window are left
   unset: they only feed output pixels outside the crop, which are discarded. Rounding to uint8 is then the only
   difference from the reference (plus the DCT downscale, where used).
3. Per image, while the crop is in cache: HWC -> CHW (flipped if drawn so) as uint8, then -- on a CPU device --
   float, + (PCA colour shift - mean), [* 1/std] in place in the batch. With a CUDA device the uint8 crops travel
   (a quarter of the bytes) and the float ops run there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch
from numpy.typing import ArrayLike
from PIL import Image

from pipeline.jpeg import (
    Encoded,
    as_buffer,
    check_params,
    colour_offsets,
    decode_error,
    image_size,
    open_image,
)
from vgg.augment import AugmentParams, rescaled_size

try:
    # MARGIN: the columns it decodes beyond each side of a window, which the output buffer must hold.
    from pipeline._jpegwindow import MARGIN as WINDOW_MARGIN
    from pipeline._jpegwindow import decode_window
except ImportError:  # built at install time where libjpeg-turbo's development files are present
    decode_window = None

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # torchvision is moving its codecs to TorchCodec; PIL covers the gap
    decode_jpeg = None

# torchvision 0.29 deprecates its image codecs. Keep using them while they exist (libjpeg-turbo straight into a
# tensor, faster than PIL here); decode() falls back to PIL when they are gone.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

# F.interpolate's antialiased kernel. Called directly because it alone takes both an output size (only the rows and
# columns up to the crop) and the scale factor of the full rescale (which fixes the sampling grid).
_resample_aa = torch.ops.aten._upsample_bilinear2d_aa

DCT_REDUCTIONS = (8, 4, 2)  # what libjpeg's scaled IDCT offers through PIL's draft()
# Decode only the top rows when they are at most this fraction of the image. PIL's route into libjpeg costs ~15% more
# per row than torchvision's (1.43 vs 1.23 ms for a whole 375x500 JPEG at quality 90), so it pays below ~0.85.
PARTIAL_DECODE_MAX = 0.8


def dct_reduction(downscale: float) -> int:
    """The largest libjpeg DCT reduction (8, 4, 2, or 1 for none) that keeps the residual downscale >= 1."""
    return next((r for r in DCT_REDUCTIONS if downscale >= r), 1)


def rows_needed(span: float, h: int, rows: int, available: int) -> int:
    """Input rows (of ``available``, spanning ``span`` pixels) that the first ``rows`` rows of an h-row rescale read."""
    s = span / h  # input pixels per output pixel
    # The filter reaches max(s, 1) input pixels beyond an output pixel's centre: keep every row it touches, so that no
    # tap is clipped and the weights are those of the full rescale.
    return min(available, math.ceil(rows * s + max(s, 1.0) + 1))


def decode(data: Encoded, reduce: int, index: int = 0,
           keys: Sequence[str] | None = None) -> tuple[torch.Tensor, float]:
    """A (3, H', W') uint8 RGB tensor and the reduction actually applied (H' = ceil(H / reduction))."""
    buf = as_buffer(data)
    try:
        if reduce == 1 and decode_jpeg is not None and bytes(buf[:2]) == b"\xff\xd8":
            # bytearray: torch wants a writable buffer (the copy is ~1% of the decode).
            return decode_jpeg(torch.frombuffer(bytearray(buf), dtype=torch.uint8), mode=ImageReadMode.RGB), 1.0
    except Exception as e:  # libjpeg's errors surface as RuntimeError; report them as PIL's are
        raise decode_error(index, keys, e) from e
    image = open_image(data, index, keys)
    try:
        factor = draft(image, reduce)
        # PIL feeds libjpeg 64 KiB at a time, and libjpeg suspends and re-reads at each boundary; one read of the
        # whole file decodes large photos ~1.5x faster.
        image.decodermaxblock = max(image.decodermaxblock, len(buf))
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1), factor
    except Exception as e:  # PIL raises several types (OSError for truncation, ...); all mean "this item is broken"
        raise decode_error(index, keys, e) from e


def draft(image: Image.Image, reduce: int) -> float:
    """Ask libjpeg for a 1/``reduce`` DCT-domain downscale of an opened JPEG; the reduction it will apply."""
    if reduce > 1 and image.format == "JPEG":
        width = image.width
        drafted = image.draft("RGB", (image.width // reduce, image.height // reduce))
        if drafted is not None:
            return width / drafted[1][2]
    return 1.0


def decode_rows(image: Image.Image, buf: bytes | bytearray | memoryview, rows: int) -> torch.Tensor | None:
    """Rows [0, rows) of an opened (possibly drafted) RGB JPEG, libjpeg stopped after them: (4, rows, W) uint8 (RGB +
    padding, HWC in memory); None where the result is not to be trusted (the caller then decodes the whole image)."""
    # PIL's own decoder object, driven directly: Image.load() would insist on every row. Pillow keeps RGB as 4 bytes
    # per pixel; the image is handed to torch through Arrow without a copy, padding byte included.
    try:
        tile = image.tile[0]
        width = image.width
        out = Image.core.fill("RGB", (width, rows), 0)
        decoder = Image._getdecoder(image.mode, tile.codec_name, tile.args, image.decoderconfig)
        try:
            decoder.setimage(out, (0, 0, width, rows))
            consumed, err = decoder.decode(buf[tile.offset :])
        finally:
            decoder.cleanup()
        # consumed >= 0: libjpeg wants more bytes (a truncated file). An error with every row asked for is a real one.
        # Stopping early makes libjpeg's finish step complain (err < 0) -- so does a fatal error mid-image, which
        # leaves the rows after it at the fill value: a last row of zeros sends the image to the full decode, which
        # tells the two apart (a black image just pays a full decode).
        if consumed >= 0 or (err < 0 and rows == image.height):
            return None
        flat = pa.array(Image.Image()._new(out)).values  # rows are contiguous below Pillow's block size (16 MiB)
        pixels = torch.from_dlpack(flat).view(rows, width, 4)
    except (AttributeError, TypeError, ValueError, OSError):  # an older or newer Pillow without these internals
        return None
    if not pixels[-1, :, :3].any():
        return None
    return pixels.permute(2, 0, 1)


def first_needed(span: float, h: int, first: int) -> int:
    """The first input row (of ``span`` pixels rescaled to h rows) that output rows ``first`` onwards read."""
    s = span / h
    # Output row i reads from its centre (i + 0.5) * s less the filter's reach max(s, 1); one more row to spare.
    return max(0, math.floor(first * s - max(s, 1.0)) - 1)


def decode_window_for_crop(buf: bytes | bytearray | memoryview, reduce: int, height: int, width: int, h: int, w: int,
                           top: int, left: int, crop: int) -> tuple[torch.Tensor, float] | None:
    """The rows and columns of a JPEG that a crop of its h x w rescale reads, decoded by ``pipeline._jpegwindow`` at
    1/``reduce`` and placed at their own coordinates in a (3, y1, x1') uint8 HWC-in-memory tensor whose other pixels
    are left unset; and the reduction. None where that path does not apply (the caller decodes more)."""
    rows, cols = -(-height // reduce), -(-width // reduce)  # libjpeg's scaled size
    factor = width / cols
    span_h, span_w = height / factor, width / factor
    y0, y1 = first_needed(span_h, h, top), rows_needed(span_h, h, top + crop, rows)
    x0, x1 = first_needed(span_w, w, left), rows_needed(span_w, w, left + crop, cols)
    out = torch.empty((y1, min(x1 + WINDOW_MARGIN, cols), 3), dtype=torch.uint8)
    done = decode_window(buf, out.numpy(), reduce, x0, y0, x1, y1)
    if done is None or done[1] != cols:
        return None
    return out.permute(2, 0, 1), factor


def decode_for_crop(data: Encoded, reduce: int, height: int, width: int, h: int, w: int, top: int, left: int,
                    crop: int, index: int = 0, keys: Sequence[str] | None = None) -> tuple[torch.Tensor, float]:
    """``decode``, but only what the crop at (top, left) of an h x w rescale of this height x width image reads, as
    far as the available decoder allows: (C, H', W') uint8 with C = 3, or 4 (RGB + padding), covering at least the
    rows and columns the crop reads (see ``rows_needed``, ``first_needed``); and the reduction applied."""
    buf = as_buffer(data)
    if bytes(buf[:2]) != b"\xff\xd8":
        return decode(data, reduce, index, keys)
    if decode_window is not None:
        window = decode_window_for_crop(buf, reduce, height, width, h, w, top, left, crop)
        if window is not None:
            return window
    out_rows = top + crop
    most = rows_needed(height, h, out_rows, height) > PARTIAL_DECODE_MAX * height
    if reduce == 1 and decode_jpeg is not None and most:
        return decode(data, reduce, index, keys)  # most rows needed: the faster whole decode, no PIL header parse
    image = open_image(data, index, keys)
    if image.format == "JPEG" and image.mode == "RGB" and len(image.tile) == 1:
        factor = draft(image, reduce)
        # A drafted image goes through PIL either way: there the partial decode is never slower.
        pixels = decode_rows(image, buf, rows_needed(height / factor, h, out_rows, image.height))
        if pixels is not None:
            return pixels, factor
    return decode(data, reduce, index, keys)


def resample_top_left(image: torch.Tensor, span_h: float, span_w: float, h: int, w: int, rows: int,
                      cols: int) -> torch.Tensor:
    """Rows [0, rows) x columns [0, cols) of ``image`` (spanning span_h x span_w of its pixels) rescaled to h x w."""
    y1 = rows_needed(span_h, h, rows, image.shape[-2])
    x1 = rows_needed(span_w, w, cols, image.shape[-1])
    # torch's uint8 kernel skips an axis whose input and output sizes are equal, whatever the scale: a slight
    # upscale (S just above the shorter side) whose window happens to be as long as its output would come back
    # unscaled. Make the sizes differ -- one more input pixel, or one more output pixel at the image's edge.
    out_rows, out_cols = rows, cols
    if y1 == rows and span_h != h:
        y1, out_rows = (y1 + 1, rows) if y1 < image.shape[-2] else (y1, rows + 1)
    if x1 == cols and span_w != w:
        x1, out_cols = (x1 + 1, cols) if x1 < image.shape[-1] else (x1, cols + 1)
    # Channels-last (HWC in memory) is the layout torch's uint8 kernel is vectorised for: ~1.5x faster than CHW,
    # including this copy of the region.
    region = image[None, :, :y1, :x1].contiguous(memory_format=torch.channels_last)
    return _resample_aa(region, [out_rows, out_cols], False, h / span_h, w / span_w)[0, :, :rows, :cols]


def normalise_batch(images: torch.Tensor, offsets: np.ndarray, inv_std: torch.Tensor | None,
                    device: torch.device) -> torch.Tensor:
    """(N, 3, h, w) uint8 -> float32 on ``device``: (x + offset) [* 1/std]."""
    # uint8 travels to an accelerator: a quarter of the bytes of the float batch.
    out = images.to(device, non_blocking=True).float()
    # In place and same-dtype: a mixed uint8 + float add allocates through a slow casting path (10x slower here).
    out.add_(torch.as_tensor(offsets, dtype=torch.float32, device=device)[:, :, None, None])
    if inv_std is not None:
        out.mul_(inv_std.to(device))
    return out


def _inv_std(std: ArrayLike | None) -> torch.Tensor | None:
    if std is None:
        return None
    return torch.as_tensor(1.0 / np.asarray(std, np.float64), dtype=torch.float32).view(3, 1, 1)


class CpuTrainDecoder:
    """The training transform on the CPU (see the module docstring); output on ``device``."""

    backend = "cpu"
    # No state is shared between calls (buffers are per call), and libjpeg, PIL's decoder and torch's kernels release
    # the GIL: Ray Data's prefetch threads may decode batches concurrently, one core each (pipeline.loader).
    thread_safe = True

    def __init__(self, *, crop: int, mean: ArrayLike, eigval: ArrayLike, eigvec: ArrayLike,
                 std: ArrayLike | None = None, device: torch.device = torch.device("cpu")) -> None:
        self.crop, self.device = crop, torch.device(device)
        self.mean, self.eigval, self.eigvec = (np.asarray(a, np.float64) for a in (mean, eigval, eigvec))
        self.inv_std = _inv_std(std)

    def __call__(self, images: Sequence[Encoded], params: Sequence[AugmentParams],
                 keys: Sequence[str] | None = None) -> torch.Tensor:
        """(N, 3, crop, crop) float32 on ``device``."""
        if len(images) != len(params) or (keys is not None and len(keys) != len(images)):
            raise ValueError(f"got {len(images)} images, {len(params)} params and {len(keys or [])} keys")
        c, n = self.crop, len(images)
        offsets = colour_offsets(params, self.eigval, self.eigvec, self.mean)
        on_cpu = self.device.type == "cpu"
        if on_cpu:
            out = torch.empty((n, 3, c, c), dtype=torch.float32)
            shift = torch.as_tensor(offsets, dtype=torch.float32)
            crop_u8 = torch.empty((3, c, c), dtype=torch.uint8)
        else:
            crops = torch.empty((n, 3, c, c), dtype=torch.uint8)
        for i, (data, p) in enumerate(zip(images, params)):
            height, width = image_size(data, i, keys)
            h, w = check_params(height, width, p, c, i, keys)
            reduce = dct_reduction(min(height / h, width / w))
            pixels, factor = decode_for_crop(data, reduce, height, width, h, w, p.top, p.left, c, i, keys)
            window = resample_top_left(pixels, height / factor, width / factor, h, w, p.top + c, p.left + c)
            window = window[:3, p.top :, p.left :].numpy()
            # numpy's strided copy (HWC window -> CHW, flip fused) is ~2x torch's here.
            (crop_u8 if on_cpu else crops[i]).numpy()[...] = window[:, :, ::-1] if p.flip else window
            if on_cpu:
                # float, colour shift and std while the crop is in cache: one pass over the batch's memory instead
                # of three (the batch is 19 MB at 32 x 224^2; bandwidth-bound, that was ~10% of the transform).
                o = out[i]
                o.copy_(crop_u8)
                o.add_(shift[i].view(3, 1, 1))
                if self.inv_std is not None:
                    o.mul_(self.inv_std)
        return out if on_cpu else normalise_batch(crops, offsets, self.inv_std, self.device)


class CpuEvalDecoder:
    """The test transform on the CPU: shorter side to Q (whole image), mean [and std] removed; output on ``device``."""

    backend = "cpu"
    thread_safe = True

    def __init__(self, *, mean: ArrayLike, std: ArrayLike | None = None,
                 device: torch.device = torch.device("cpu")) -> None:
        self.device = torch.device(device)
        self.offset = -np.asarray(mean, np.float64).reshape(1, 3)
        self.inv_std = _inv_std(std)

    def __call__(self, images: Sequence[Encoded], q: int, keys: Sequence[str] | None = None) -> list[torch.Tensor]:
        """One (3, h, w) float32 tensor per image, shorter side ``q``, on ``device``."""
        out = []
        for i, data in enumerate(images):
            height, width = image_size(data, i, keys)
            h, w = rescaled_size(height, width, q)
            pixels, factor = decode(data, dct_reduction(min(height / h, width / w)), i, keys)
            resized = resample_top_left(pixels, height / factor, width / factor, h, w, h, w)
            out.append(normalise_batch(resized[None], self.offset, self.inv_std, self.device)[0])
        return out
