"""Helpers of the evaluation tests: tiny nets and their cards, the tiny split's rows and decoded images."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.decode import make_eval_decoder
from pipeline.manifest import load_manifest
from vgg.card import ModelCard
from vgg.model import build

CROP = 32


def tiny_net(num_classes: int, seed: int = 0, arch: str = "A") -> torch.nn.Module:
    """A thin net of Table 1 (width 1/8, FC 32, crop 32) with Glorot init: milliseconds per image on a CPU."""
    torch.manual_seed(seed)
    return build(arch, num_classes, width=0.125, fc_width=32, crop=CROP, init="glorot").eval()


def card_for(manifest_path: str, smin: int = 32, smax: int = 48, classes: tuple[str, ...] | None = None,
             info: dict | None = None, arch: str = "A", flip: bool = True) -> ModelCard:
    """A card for a tiny net trained on the tiny set's classes and mean (with flips unless ``flip`` is False)."""
    m = load_manifest(manifest_path)
    return ModelCard(arch=arch, num_classes=m.num_classes, crop=CROP, smin=smin, smax=smax,
                     mean=tuple(m.stats.mean_rgb), width=0.125, fc_width=32,
                     classes=tuple(m.wnids) if classes is None else classes, flip=flip, info=info or {})


def split_rows(manifest_path: str, split: str) -> dict[str, list]:
    """Every row of a split, all shards, in manifest order."""
    m = load_manifest(manifest_path)
    tables = [pq.read_table(uri) for uri in m.shard_uris(split)]
    return {c: [v for t in tables for v in t.column(c).to_pylist()] for c in ("key", "label", "image", "height", "width")}


def decoded(manifest_path: str, split: str, q: int) -> tuple[list[torch.Tensor], np.ndarray, list[str]]:
    """A split's images rescaled to Q with the CPU decoder (mean removed), their labels and keys."""
    m = load_manifest(manifest_path)
    rows = split_rows(manifest_path, split)
    images = make_eval_decoder("cpu", mean=m.mean_rgb, device="cpu")(rows["image"], q, keys=rows["key"])
    return images, np.asarray(rows["label"]), rows["key"]
