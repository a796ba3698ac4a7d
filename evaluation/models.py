"""Trained nets as the sweep sees them: a source (directory, s3:// URI or MLflow run) -> card, weights and a stable id.

The sweep reads model directories (``vgg.card``: ``model.pt`` + ``card.json``) and never imports the trainer. A
training run points at its best model directory through the run tag ``verydeep.model_uri``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import storage
from vgg.card import CARD_FILE, MODEL_FILE, CardError, ModelCard, load_model
from vgg.protocol import multi_scale_q, single_scale_q

MODEL_URI_TAG = "verydeep.model_uri"  # set by training runs on the URI of their best model directory


class ModelError(ValueError):
    """A model source that cannot be used; the message is one line naming it."""


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


def run_id_of(source: str) -> str | None:
    """The MLflow run id in ``runs:/<id>[/...]`` or a bare run id (32 hex digits, no such local path), else None."""
    if source.startswith("runs:/"):
        return source[len("runs:/"):].strip("/").split("/")[0] or None
    if len(source) == 32 and all(c in "0123456789abcdef" for c in source) and not Path(source).exists():
        return source
    return None


def resolve_source(source: str, tracking_uri: str | None = None) -> str:
    """The model directory URI of a source: a path or s3:// URI as is; an MLflow run through its model URI tag."""
    run_id = run_id_of(source)
    if run_id is None:
        return source
    import mlflow

    try:
        run = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except Exception as e:  # MlflowException for an unknown id, connection errors for an unreachable server
        raise ModelError(f"model {source}: cannot read MLflow run {run_id} ({' '.join(str(e).split())[:200]})") from None
    uri = run.data.tags.get(MODEL_URI_TAG)
    if not uri:
        raise ModelError(f"model {source}: MLflow run {run_id} has no {MODEL_URI_TAG} tag (not a verydeep training run)")
    return uri


def fetch(uri: str, dst: str | os.PathLike, endpoint: str | None = None) -> Path:
    """A local directory holding the model directory's two files; local directories are used in place."""
    if not storage.is_s3(uri) and "://" not in uri.replace("file://", ""):
        return Path(uri.removeprefix("file://"))
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in (CARD_FILE, MODEL_FILE):
        try:
            data = storage.read_bytes(storage.join(uri, name), endpoint)
        except storage.StorageError as e:
            raise CardError(f"{uri}: cannot read {name} ({e})") from None
        (dst / name).write_bytes(data)
    return dst


def content_id(directory: Path) -> str:
    """A short hash of the card and the weights: the same files give the same id on any machine."""
    digest = hashlib.sha256()
    for name in (CARD_FILE, MODEL_FILE):
        with open(directory / name, "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def check_directory(source: str, uri: str) -> None:
    """Refuse, in one line, a model source that names one of a model directory's files instead of the directory."""
    if storage.is_local(uri):
        is_file = Path(uri.removeprefix("file://")).is_file()
    else:  # object stores have no directories to ask: go by the name
        is_file = uri.rstrip("/").rsplit("/", 1)[-1] in (MODEL_FILE, CARD_FILE)
    if is_file:
        parent = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else "."
        raise ModelError(f"model {source}: {uri} is a file, not a model directory: pass the directory that holds "
                         f"{MODEL_FILE} and {CARD_FILE} (e.g. {parent})")


def load(source: str, tracking_uri: str | None = None, endpoint: str | None = None) -> LoadedModel:
    """Resolve, fetch and load one model source; every failure is a one-line ModelError naming the source."""
    uri = resolve_source(source, tracking_uri)
    check_directory(source, uri)
    with tempfile.TemporaryDirectory(prefix="verydeep-eval-") as tmp:
        try:
            local = fetch(uri, tmp, endpoint)
            model, card = load_model(local)
            digest = content_id(local)
        except CardError as e:
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
