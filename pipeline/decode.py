"""Decode + augment encoded images into training and test tensors, with the paper's semantics from ``vgg.augment``.

The caller draws the randomness -- ``vgg.augment.sample_params`` with a generator seeded by ``seed_for(seed, epoch,
key)``, from the height/width stored beside each image -- and a decoder only APPLIES it: the same image in the same
epoch gets the same scale, crop, flip and colour shift whichever backend or worker decodes it.

    decode = make_train_decoder(crop=224, mean=MEAN, eigval=EIGVAL, eigvec=EIGVEC)
    params = [sample_params(np.random.default_rng(seed_for(seed, epoch, k)), h, w, 256, 512, 224) for k, h, w in rows]
    batch = decode(jpegs, params, keys=keys)   # (N, 3, 224, 224) float32 on decode.device

    evaluate = make_eval_decoder(mean=MEAN)
    images = evaluate(jpegs, q=384)            # list of (3, h, w) float32, shorter side 384, on evaluate.device

Backends (one semantics; the reference is ``vgg.augment.train_reference`` / ``eval_reference``):

- ``"dali"`` (``pipeline.decode_dali``): NVIDIA DALI. On a CUDA device nvJPEG ("mixed") decode and every op on the
  GPU, the batch handed to torch on that device through DLPack (no host copy); on the CPU the same graph on DALI's CPU
  operators. The JPEG bytes and per-image parameters come in through ``fn.external_source``: sharding, shuffling and
  epochs stay with Ray Data.
- ``"cpu"`` (``pipeline.decode_cpu``): libjpeg-turbo (our window decode, else torchvision / PIL) and torch's uint8
  resampling; needs no DALI. With a CUDA device it ships the uint8 crops and does the float ops there.
- ``"auto"``: DALI on a CUDA device when DALI imports; the CPU backend on a CPU device, or without DALI. On a CPU
  the CPU backend is the faster of the two per core (benchmarks/decode.py, four runs: 3.2-3.7x the torchvision
  recipe vs DALI CPU's 1.7-2.2x on ImageNet-like JPEGs). ``device=None`` or ``"auto"``: CUDA when available, else CPU.

Both backends decode only what a crop needs (DALI: a ROI decode of the window; CPU: the window's rows and columns
through libjpeg-turbo's scanline cropping and skipping, and libjpeg's DCT-domain 1/2, 1/4, 1/8 downscale when the
window is at least twice the crop) and resample the window on the reference's own pixel grid with the reference's
filter (antialiased bilinear), so they match the reference closely; tests/pipeline/test_decode.py states the
tolerances. Images are decoded as stored (EXIF orientation is ignored, as PIL does for the reference).

This module is the factory only: what both backends share (headers, sizes, one-line errors) is ``pipeline.jpeg``,
which they import instead of this module.

Neither backend changes torch's thread count; the data pipeline parallelises across Ray Data tasks (one core each), so
set ``torch.set_num_threads`` where the worker process is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike

from pipeline.jpeg import DecodeError, Encoded  # noqa: F401 (DecodeError: what a decoder raises, part of this API)
from vgg.augment import AugmentParams

BACKENDS = ("auto", "dali", "cpu")


class TrainDecoder(Protocol):
    """Applies drawn training params to a batch of encoded images."""

    backend: str
    device: torch.device

    def __call__(
        self, images: Sequence[Encoded], params: Sequence[AugmentParams], keys: Sequence[str] | None = None
    ) -> torch.Tensor:
        """(N, 3, crop, crop) float32 on ``device``: rescale to S, crop, flip, colour shift, mean (and std)."""
        ...


class EvalDecoder(Protocol):
    """Rescales a batch of encoded images for dense evaluation."""

    backend: str
    device: torch.device

    def __call__(self, images: Sequence[Encoded], q: int, keys: Sequence[str] | None = None) -> list[torch.Tensor]:
        """One (3, h, w) float32 tensor per image on ``device``: shorter side ``q``, mean (and std) removed."""
        ...


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> the current CUDA device when available, else CPU; ``"cuda"`` gets an explicit index."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"decoders run on 'cpu' or 'cuda', got device {device}")
    return device


def dali_importable() -> bool:
    """Whether NVIDIA DALI imports here (it is optional: machines without it use the CPU backend)."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # ImportError, or a broken install (a missing shared library raises OSError): either way, no
        return False
    return True


def resolve_backend(backend: str = "auto", device: str | torch.device | None = None) -> str:
    """``"auto"`` -> ``"dali"`` on a CUDA device when DALI imports, else ``"cpu"``; explicit ``"dali"`` needs DALI."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        # On CPUs our own path beats DALI's CPU operators per core; DALI's win is nvJPEG and GPU ops.
        return "dali" if resolve_device(device).type == "cuda" and dali_importable() else "cpu"
    if backend == "dali" and not dali_importable():
        raise ImportError("backend 'dali' needs NVIDIA DALI (pip install nvidia-dali-cuda130); use 'cpu' or 'auto'")
    return backend


def check_colour_stats(mean: ArrayLike, eigval: ArrayLike | None = None, eigvec: ArrayLike | None = None,
                       std: ArrayLike | None = None) -> None:
    """Raise one line unless mean/std are 3 values (0-255 scale), eigval 3 values and eigvec a 3x3 matrix."""
    if np.shape(mean) != (3,):
        raise ValueError(f"mean must be 3 RGB values on the 0-255 scale, got shape {np.shape(mean)}")
    if std is not None and (np.shape(std) != (3,) or np.any(np.asarray(std) <= 0)):
        raise ValueError(f"std must be 3 positive values on the 0-255 scale, got {std}")
    if eigval is not None and np.shape(eigval) != (3,):
        raise ValueError(f"eigval must be 3 values, got shape {np.shape(eigval)}")
    if eigvec is not None and np.shape(eigvec) != (3, 3):
        raise ValueError(f"eigvec must be 3x3 (eigenvectors as columns), got shape {np.shape(eigvec)}")


def make_train_decoder(
    backend: str = "auto",
    *,
    crop: int,
    mean: ArrayLike,
    eigval: ArrayLike,
    eigvec: ArrayLike,
    std: ArrayLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    num_threads: int | None = None,
) -> TrainDecoder:
    """The training transform as a batch decoder; ``batch_size``/``num_threads`` size the DALI pipeline only."""
    check_colour_stats(mean, eigval, eigvec, std)
    device = resolve_device(device)
    backend = resolve_backend(backend, device)
    if backend == "dali":
        from pipeline.decode_dali import DaliTrainDecoder

        return DaliTrainDecoder(crop=crop, mean=mean, eigval=eigval, eigvec=eigvec, std=std, device=device,
                                batch_size=batch_size, num_threads=num_threads)
    from pipeline.decode_cpu import CpuTrainDecoder

    return CpuTrainDecoder(crop=crop, mean=mean, eigval=eigval, eigvec=eigvec, std=std, device=device)


def make_eval_decoder(
    backend: str = "auto",
    *,
    mean: ArrayLike,
    std: ArrayLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    num_threads: int | None = None,
) -> EvalDecoder:
    """The test transform (shorter side to Q, no crop) as a batch decoder; DALI-only sizing as above."""
    check_colour_stats(mean, std=std)
    device = resolve_device(device)
    backend = resolve_backend(backend, device)
    if backend == "dali":
        from pipeline.decode_dali import DaliEvalDecoder

        return DaliEvalDecoder(mean=mean, std=std, device=device, batch_size=batch_size, num_threads=num_threads)
    from pipeline.decode_cpu import CpuEvalDecoder

    return CpuEvalDecoder(mean=mean, std=std, device=device)
