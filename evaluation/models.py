"""Trained nets as the sweep sees them: a source (directory, s3:// URI or MLflow run) -> card, weights and a stable id.

The sweep reads model directories (``vgg.card``: ``model.pt`` + ``card.json``) and never imports the trainer; sources
resolve and fetch through ``pipeline.models``, as training's ``--init-from`` does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.models import ModelError, fetched
from vgg.card import CARD_FILE, MODEL_FILE, CardError, ModelCard, load_model
from vgg.protocol import multi_scale_q, single_scale_q


@dataclass(frozen=True)
class LoadedModel:
    """One net of the sweep: where it came from, its card and weights, and ids for files and tables."""

    source: str  # as given on the command line
    uri: str  # the model directory it resolved to
    card: ModelCard
    state: dict[str, torch.Tensor]
    model_id: str  # stable and content-addressed: posteriors of changed weights are never reused
    label: str  # the paper's notation for tables: config/train S

    @property
    def scale(self) -> str:
        """The training scale as the paper writes it: 256, or [256;512]."""
        return str(self.card.train_scale)


def content_id(directory: Path) -> str:
    """A short hash of the card and the weights: the same files give the same id on any machine."""
    digest = hashlib.sha256()
    for name in (CARD_FILE, MODEL_FILE):
        with open(directory / name, "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def load(source: str, tracking_uri: str | None = None, endpoint: str | None = None) -> LoadedModel:
    """Resolve, fetch and load one model source; every failure is a one-line ModelError naming the source."""
    try:
        with fetched(source, tracking_uri, endpoint) as (uri, local):
            model, card = load_model(local)
            digest = content_id(local)
    except (ModelError, CardError) as e:
        raise ModelError(f"model {source}: {e}") from None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    s = card.train_scale
    model_id = f"{card.arch}-{s.smin}" + (f"-{s.smax}" if s.jittered else "") + f"-{digest}"
    return LoadedModel(source, uri, card, state, model_id, f"{card.arch}/{s}")


def default_scales(card: ModelCard) -> tuple[int, ...]:
    """The paper's test scales for a net (Sec. 4.1-4.2): the multi-scale set, which holds the single-scale Q; scales
    below the crop (S-32 of a net trained at S = crop) are left out, since no crop fits."""
    qs = {single_scale_q(card.train_scale), *multi_scale_q(card.train_scale)}
    return tuple(sorted(q for q in qs if q >= card.crop))


def label_models(models: list[LoadedModel]) -> list[LoadedModel]:
    """Make table labels unique: two nets of the same config and S get their ids appended."""
    counts: dict[str, int] = {}
    for m in models:
        counts[m.label] = counts.get(m.label, 0) + 1
    return [m if counts[m.label] == 1 else LoadedModel(m.source, m.uri, m.card, m.state, m.model_id,
                                                       f"{m.label} ({m.model_id[-6:]})") for m in models]
