"""One unit of the sweep: a net, a test scale Q and a shard of images -> posteriors of every requested view.

Each image is decoded and rescaled once per Q, and that one tensor serves every method (dense and its flip, the 50
crops; without flips dense alone and 25 crops). Images are ordered by their rescaled shape (known from the stored
height and width before decoding), so batches hold equal shapes without padding: dense evaluation of an image must
see only that image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from evaluation.methods import evaluate_batch, views_of
from pipeline.decode import EvalDecoder, make_eval_decoder, resolve_device
from pipeline.shards import COLUMNS
from pipeline.verify import read_table
from vgg.augment import rescaled_size
from vgg.card import ModelCard
from vgg.evaluate import group_by_shape, stack_by_shape
from vgg.model import VGG


@dataclass
class ShardResult:
    """Posteriors of one (net, Q, shard): keys and labels in shard order, (N, C) float32 per view."""

    keys: list[str]
    labels: np.ndarray
    probs: dict[str, np.ndarray]
    seconds: float = 0.0


def decoder_for(backend: str, card: ModelCard, device: torch.device) -> EvalDecoder:
    """The eval decoder for a card's mean and std on ``device``; ``pipeline.decode.resolve_backend`` picks "auto"."""
    return make_eval_decoder(backend, mean=card.mean, std=card.std, device=device)


def shape_batches(heights: Sequence[int], widths: Sequence[int], q: int, batch_size: int) -> list[list[int]]:
    """Row indices in batches of equal rescaled shape (at most ``batch_size`` each), largest groups first."""
    groups = group_by_shape([rescaled_size(int(h), int(w), q) for h, w in zip(heights, widths)])
    ordered = sorted(groups, key=len, reverse=True)
    return [g[s : s + batch_size] for g in ordered for s in range(0, len(g), batch_size)]


def evaluate_images(model: VGG, decoder: EvalDecoder, images: Sequence[bytes], heights: Sequence[int],
                    widths: Sequence[int], keys: Sequence[str], q: int, methods: Sequence[str],
                    batch_size: int = 32, max_crops: int = 250, flip: bool = True) -> dict[str, np.ndarray]:
    """Posteriors (N, C) float32 per view for encoded images at test scale ``q``: each decoded once; mirror images
    only with ``flip``."""
    n, views = len(images), views_of(methods, flip)
    out = {v: np.empty((n, model.num_classes), np.float32) for v in views}
    with torch.inference_mode():
        for idx in shape_batches(heights, widths, q, batch_size):
            decoded = decoder([images[i] for i in idx], q, keys=[keys[i] for i in idx])
            # The stored size predicts the decoded one; regroup by the real shapes all the same, never pad.
            for members, batch in stack_by_shape(decoded):
                batch = batch.contiguous(memory_format=torch.channels_last)
                probs = evaluate_batch(model, batch, model.crop, methods, max_crops, flip)
                rows = [idx[j] for j in members]
                for v in views:
                    out[v][rows] = probs[v].float().cpu().numpy()
    return out


def read_shard(uri: str, limit: int | None = None, endpoint: str | None = None) -> dict[str, list]:
    """The columns of one Parquet shard (its first ``limit`` rows) as Python lists, every page's checksum verified."""
    table = read_table(uri, COLUMNS, endpoint)
    if limit is not None:
        table = table.slice(0, limit)
    return {c: table.column(c).to_pylist() for c in COLUMNS}


def for_inference(model: VGG, device: torch.device | str = "cpu") -> VGG:
    """The net in eval mode on ``device``, channels-last: oneDNN and cuDNN run these convs fastest in NHWC (on a CPU
    core a 64-px crop of a thin net took 60 ms NHWC against 265-830 ms NCHW, batch size depending)."""
    return model.to(device=device, memory_format=torch.channels_last).eval()


def build_model(card: ModelCard, state: dict[str, torch.Tensor], device: torch.device) -> VGG:
    """The net of a card with its weights, ready for inference on ``device``."""
    model = card.build()
    model.load_state_dict(state)
    return for_inference(model, device)


def prepare_unit(card_doc: dict, state: dict[str, torch.Tensor], shard_uri: str, limit: int | None, decoder: str,
                 endpoint: str | None) -> tuple[ModelCard, VGG, EvalDecoder, dict[str, list]]:
    """What a Ray task over one (net, shard) starts with: the card, the net on this worker's device, its decoder,
    the shard's rows."""
    card = ModelCard.from_dict(card_doc)
    device = resolve_device("auto")
    model = build_model(card, state, device)
    return card, model, decoder_for(decoder, card, device), read_shard(shard_uri, limit, endpoint)


def evaluate_shard(card_doc: dict, state: dict[str, torch.Tensor], shard_uri: str, limit: int | None, q: int,
                   methods: Sequence[str], decoder: str = "auto", batch_size: int = 32, max_crops: int = 250,
                   endpoint: str | None = None, flip: bool = True) -> ShardResult:
    """The whole unit: read the shard, build the net on this worker's device, evaluate every image at Q."""
    import time

    start = time.perf_counter()
    _, model, decode, rows = prepare_unit(card_doc, state, shard_uri, limit, decoder, endpoint)
    probs = evaluate_images(model, decode, rows["image"], rows["height"], rows["width"],
                            rows["key"], q, methods, batch_size, max_crops, flip)
    return ShardResult(rows["key"], np.asarray(rows["label"], np.int32), probs, time.perf_counter() - start)
