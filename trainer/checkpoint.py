"""Training checkpoints: what one holds, where the latest one is, and what an ``--init-from`` source gives.

A checkpoint is a directory that Ray Train persists under ``<storage>/<name>/`` (local or ``s3://``):

    model.pt, card.json   the net and its model card (``vgg.card``: the evaluation sweep reads these alone)
    optimizer.pt          SGD momentum buffers
    train_state.json      epoch, step, position in the epoch, schedule state, config, MLflow run id, history

RNG streams are not stored: every stochastic choice is seeded from (seed, epoch, step, rank) -- augmentation per image
from (seed, epoch, key) (``vgg.augment.seed_for``), dropout per worker at each epoch start and resume point -- so a
resumed run draws what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline import storage
from pipeline.models import fetched
from vgg.card import MODEL_FILE, CardError, ModelCard, load_card, save_model

OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"


class CheckpointError(ValueError):
    """A checkpoint or init source that cannot be used; the message is one line."""


@dataclass
class TrainState:
    """Where training stands; plain data, stored as JSON in every checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps so far
    step_in_epoch: int = 0  # optimiser steps into epoch ``epoch`` (0 at an epoch boundary)
    schedule: dict[str, Any] = field(default_factory=dict)  # trainer.schedule.ScheduleState.to_dict()
    config: dict[str, Any] = field(default_factory=dict)  # trainer.config.to_dict()
    mlflow_run_id: str | None = None
    best_val_top1: float | None = None
    best_checkpoint: str | None = None  # URI of the checkpoint with the best validation top-1 so far
    history: list[dict[str, float]] = field(default_factory=list)  # one entry of val/train metrics per epoch

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainState:
        """Inverse of ``dataclasses.asdict``; unknown keys are an error."""
        try:
            return cls(**doc)
        except TypeError as e:
            raise CheckpointError(f"bad {STATE_FILE}: {e}") from None


def write(directory: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
          card: ModelCard, state: TrainState) -> Path:
    """Write a complete checkpoint into a local directory (the state file last)."""
    directory = Path(directory)
    save_model(directory, model, card)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    (directory / STATE_FILE).write_text(json.dumps(asdict(state), indent=1, sort_keys=True))
    return directory


def read_state(directory: str | os.PathLike) -> TrainState:
    """The train state of a local checkpoint directory."""
    path = Path(directory) / STATE_FILE
    try:
        return TrainState.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no {STATE_FILE} (not a training checkpoint)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def read_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model state dict of a local checkpoint or model directory."""
    path = Path(directory) / MODEL_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no {MODEL_FILE}") from None
    except Exception as e:  # a truncated or foreign file: torch raises several types
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__})") from None


def read_optimizer(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The optimiser state of a local checkpoint, or None when it holds none."""
    path = Path(directory) / OPTIMIZER_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def run_dir(storage_uri: str, name: str) -> str:
    """Where Ray Train keeps a run's checkpoints: ``<storage>/<name>``."""
    return storage.join(storage_uri, name)


def find_latest(storage_uri: str, name: str) -> tuple[str, TrainState] | None:
    """The run's checkpoint with the most optimiser steps, and its state; None when the run has none yet.

    Reads only checkpoints whose state file exists: it is written last, so a checkpoint cut off mid-upload is never
    chosen.
    """
    return latest_in(run_dir(storage_uri, name))


def fetch_checkpoint(uri: str, dst: str | os.PathLike) -> Path:
    """A local directory with every file of a checkpoint: a local one in place, one on S3 copied into ``dst``."""
    if storage.is_local(uri):
        return Path(uri.removeprefix("file://"))
    dst = Path(dst)
    for rel, _ in storage.walk(uri):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes(storage.read_bytes(storage.join(uri, rel)))
    return dst


def latest_in(root: str) -> tuple[str, TrainState] | None:
    """The checkpoint with the most optimiser steps under a run directory, and its state; None when there is none."""
    try:
        files = storage.walk(root)
    except storage.StorageError:
        if storage.exists(root):
            raise
        return None
    best: tuple[tuple[int, int], str, TrainState] | None = None
    for rel, _ in files:
        parts = rel.split("/")
        if len(parts) != 2 or parts[1] != STATE_FILE:
            continue
        uri = storage.join(root, parts[0])
        try:
            state = TrainState.from_dict(json.loads(storage.read_bytes(storage.join(uri, STATE_FILE))))
        except (CheckpointError, json.JSONDecodeError):
            continue
        key = (state.step, state.epoch)
        if best is None or key > best[0]:
            best = (key, uri, state)
    return None if best is None else (best[1], best[2])


def load_source(source: str, tracking_uri: str | None = None) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """The card and weights of an ``--init-from`` source (checkpoint, model directory or MLflow run;
    ``pipeline.models`` resolves and fetches it)."""
    with fetched(source, tracking_uri) as (_, local):
        try:
            card = load_card(local)
        except CardError as e:
            raise CheckpointError(str(e)) from None
        return card, read_weights(local)

