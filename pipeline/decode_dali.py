"""DALI backend: ROI decode of the crop's window, resize of the exact sub-pixel window, fused flip + colour + mean.

One pipeline per decoder, built once (batch size = the largest batch; smaller batches just run smaller). Everything
random comes in per sample through ``fn.external_source``, drawn by the caller from ``vgg.augment``:

    jpegs --decoders.image_slice(anchor, shape)--> window (uint8 HWC; integer window = crop box + filter margin)
          --resize(size=crop x crop, roi_start/roi_end = the crop box inside the window, antialiased linear, float)
          --crop_mirror_normalize(mirror=flip, mean=mean - PCA shift, std)--> (3, crop, crop) float32

The resize's ROI is the reference's crop box in original pixels (``vgg.augment.crop_box``), fractional; DALI samples
it on the same grid and with the same antialiased-linear filter as the reference's rescale-then-crop, and the decoded
window carries a margin of the filter's reach so taps near the crop's edges see real pixels. On a CUDA device the
decode is ``mixed`` (nvJPEG, with libjpeg's "fancy" chroma upsampling so it agrees with the CPU decoders), every op
runs on the GPU and the batch reaches torch through DLPack on torch's current stream (no host copy, no host sync). On
the CPU (``device_id=None``) the same graph runs on DALI's CPU operators, which need no GPU at all.

This module imports DALI at import time: reach it through ``pipeline.decode.make_*_decoder``, which imports it only
when the DALI backend is asked for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline

from pipeline.jpeg import (
    DecodeError,
    Encoded,
    as_buffer,
    check_params,
    colour_offsets,
    decode_error,
    describe,
    image_size,
    open_image,
)
from vgg.augment import AugmentParams, crop_box, rescaled_size

_SAMPLE = re.compile(r"sample #(\d+)")


def _default_threads(device: torch.device) -> int:
    # CPU: one thread, the data pipeline runs one decoder per core. GPU: nvJPEG's Huffman stage stays on the host and
    # wants a few threads per GPU to keep up.
    return 4 if device.type == "cuda" else 1


def _decoder_kwargs(device: torch.device) -> dict:
    """Decoder arguments that keep both devices on the reference's pixels (raw orientation, libjpeg's upsampling)."""
    kwargs: dict = {"output_type": types.RGB, "adjust_orientation": False}
    if device.type == "cuda":
        # affine=False: several Ray workers share a node; pinning each one's decoder threads to fixed cores collides.
        kwargs.update(device="mixed", jpeg_fancy_upsampling=True, affine=False)
    else:
        kwargs.update(device="cpu")
    return kwargs


def train_window(height: int, width: int, params: AugmentParams, crop: int) -> tuple[np.ndarray, ...]:
    """DALI inputs for one image: decode anchor (x, y), shape (w, h), then the ROI start/end (y, x) inside it."""
    box = crop_box(height, width, params, crop)
    # Reach of the antialiased linear filter: max(scale, 1) input pixels from an output pixel's centre, plus one.
    my, mx = max(box.height / crop, 1.0) + 1, max(box.width / crop, 1.0) + 1
    y0, x0 = max(0, math.floor(box.top - my)), max(0, math.floor(box.left - mx))
    y1 = min(height, math.ceil(box.top + box.height + my))
    x1 = min(width, math.ceil(box.left + box.width + mx))
    return (
        np.array([x0, y0], np.int32),
        np.array([x1 - x0, y1 - y0], np.int32),
        np.array([box.top - y0, box.left - x0], np.float32),
        np.array([box.top + box.height - y0, box.left + box.width - x0], np.float32),
    )


class _DaliDecoder:
    """The parts both decoders share: the pipeline's life cycle, running it, errors, handing results to torch."""

    backend = "dali"

    def __init__(self, device: torch.device, batch_size: int, num_threads: int | None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device, self.batch_size = torch.device(device), batch_size
        self.num_threads = num_threads or _default_threads(self.device)
        self.pipe = self._build()

    def _graph(self) -> DataNode:
        """The pipeline's graph, built inside the pipeline's scope: returns its one output."""
        raise NotImplementedError

    def _build(self) -> Pipeline:
        gpu = self.device.type == "cuda"
        # prefetch_queue_depth=1: every run consumes exactly the batch fed to it (run(**inputs) needs it).
        pipe = Pipeline(batch_size=self.batch_size, num_threads=self.num_threads,
                        device_id=self.device.index if gpu else None, prefetch_queue_depth=1)
        with pipe:
            pipe.set_outputs(self._graph())
        pipe.build()
        return pipe

    def _run(self, images: Sequence[Encoded], start: int, keys: Sequence[str] | None, **inputs: list) -> Any:
        """Run one chunk (items start .. start + len(images) - 1); a decode failure names the broken item."""
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        jpegs = [np.frombuffer(as_buffer(d), np.uint8) for d in images]
        try:
            # With a stream, the outputs are ready on it: no host sync here.
            (out,) = self.pipe.run(stream, jpegs=jpegs, **inputs)
        except RuntimeError as e:
            # DALI marks the pipeline invalid after an operator error: rebuild it so the decoder stays usable.
            self.pipe = self._build()
            raise self._locate(e, images, start, keys) from e
        return out

    @staticmethod
    def _locate(error: RuntimeError, images: Sequence[Encoded], start: int, keys: Sequence[str] | None) -> Exception:
        """A one-line DecodeError naming the item DALI failed on (from its message, else by decoding each with PIL)."""
        lines = str(error).splitlines() or [repr(error)]
        reason = next((line.strip() for line in lines if "sample #" in line or "failure" in line or "Failed" in line),
                      lines[-1].strip())
        match = _SAMPLE.search(str(error))
        suspects = [int(match.group(1))] if match and int(match.group(1)) < len(images) else range(len(images))
        for i in suspects:  # PIL states libjpeg's reason more plainly than DALI's message does
            try:
                open_image(images[i], start + i, keys).load()
            except Exception as e:
                return e if isinstance(e, DecodeError) else decode_error(start + i, keys, e)
        if match and int(match.group(1)) < len(images):
            return DecodeError(f"{describe(start + int(match.group(1)), keys)}: cannot decode image (DALI: {reason})")
        return DecodeError(f"items {start}..{start + len(images) - 1}: DALI failed ({reason})")

    def _to_torch(self, tensor: Any) -> torch.Tensor:
        # DLPack: zero copy. The dynamic executor allocates every output afresh, so DALI never overwrites it, and on
        # the GPU the hand-over is ordered on torch's current stream.
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                return torch.from_dlpack(tensor)
        return torch.from_dlpack(tensor)


class DaliTrainDecoder(_DaliDecoder):
    """The training transform as a DALI pipeline (see the module docstring); output on ``device``."""

    def __init__(self, *, crop: int, mean: ArrayLike, eigval: ArrayLike, eigvec: ArrayLike,
                 std: ArrayLike | None = None, device: torch.device = torch.device("cpu"), batch_size: int = 256,
                 num_threads: int | None = None) -> None:
        self.crop = crop
        self.mean, self.eigval, self.eigvec = (np.asarray(a, np.float64) for a in (mean, eigval, eigvec))
        self.std = [1.0, 1.0, 1.0] if std is None else [float(s) for s in np.asarray(std)]
        super().__init__(device, batch_size, num_threads)

    def _graph(self) -> DataNode:
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
        anchor = fn.external_source(name="anchor", dtype=types.INT32, ndim=1)
        shape = fn.external_source(name="shape", dtype=types.INT32, ndim=1)
        roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
        roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
        mean = fn.external_source(name="mean", dtype=types.FLOAT, ndim=1)
        mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0)
        images = fn.decoders.image_slice(jpegs, anchor, shape, **_decoder_kwargs(self.device))
        images = fn.resize(images, size=[self.crop, self.crop], roi_start=roi_start, roi_end=roi_end,
                           interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.FLOAT)
        return fn.crop_mirror_normalize(images, mean=mean, std=self.std, mirror=mirror, dtype=types.FLOAT,
                                        output_layout="CHW")

    def __call__(self, images: Sequence[Encoded], params: Sequence[AugmentParams],
                 keys: Sequence[str] | None = None) -> torch.Tensor:
        """(N, 3, crop, crop) float32 on ``device``."""
        if len(images) != len(params) or (keys is not None and len(keys) != len(images)):
            raise ValueError(f"got {len(images)} images, {len(params)} params and {len(keys or [])} keys")
        # CMN computes (x - mean_i) / std; mean_i = mean - shift_i makes it the reference's (x + shift - mean) / std.
        means = (-colour_offsets(params, self.eigval, self.eigvec, self.mean)).astype(np.float32)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            stop = min(start + self.batch_size, len(images))
            windows = []
            for i in range(start, stop):
                height, width = image_size(images[i], i, keys)
                check_params(height, width, params[i], self.crop, i, keys)
                windows.append(train_window(height, width, params[i], self.crop))
            anchor, shape, roi_start, roi_end = (list(column) for column in zip(*windows))
            out = self._run(images[start:stop], start, keys, anchor=anchor, shape=shape, roi_start=roi_start,
                            roi_end=roi_end, mean=list(means[start:stop]),
                            mirror=[np.array(int(p.flip), np.int32) for p in params[start:stop]])
            chunks.append(self._to_torch(out.as_tensor()))
        if not chunks:
            return torch.empty((0, 3, self.crop, self.crop), device=self.device)
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


class DaliEvalDecoder(_DaliDecoder):
    """The test transform as a DALI pipeline: full decode, shorter side to Q, mean [and std] removed."""

    def __init__(self, *, mean: ArrayLike, std: ArrayLike | None = None, device: torch.device = torch.device("cpu"),
                 batch_size: int = 64, num_threads: int | None = None) -> None:
        self.mean = [float(m) for m in np.asarray(mean)]
        self.std = [1.0, 1.0, 1.0] if std is None else [float(s) for s in np.asarray(std)]
        super().__init__(device, batch_size, num_threads)

    def _graph(self) -> DataNode:
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
        size = fn.external_source(name="size", dtype=types.FLOAT, ndim=1)
        images = fn.decoders.image(jpegs, **_decoder_kwargs(self.device))
        # The output size comes from vgg.augment.rescaled_size (its rounding), not from DALI's resize_shorter.
        images = fn.resize(images, size=size, interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.FLOAT)
        return fn.crop_mirror_normalize(images, mean=self.mean, std=self.std, dtype=types.FLOAT, output_layout="CHW")

    def __call__(self, images: Sequence[Encoded], q: int, keys: Sequence[str] | None = None) -> list[torch.Tensor]:
        """One (3, h, w) float32 tensor per image, shorter side ``q``, on ``device``."""
        result = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            sizes = [np.array(rescaled_size(*image_size(d, start + i, keys), q), np.float32)
                     for i, d in enumerate(chunk)]
            out = self._run(chunk, start, keys, size=sizes)
            result.extend(self._to_torch(out[i]) for i in range(len(out)))
        return result
