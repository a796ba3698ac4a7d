"""What a trained net is, beside its weights: the contract between training and evaluation.

A model directory holds two files, written by the trainer into every checkpoint and read by the evaluation sweep
(which never imports the trainer):

    model.pt    the state dict (torchvision-compatible names, see ``vgg.model``), CPU tensors
    card.json   this card: how to rebuild the net and feed it (arch, widths, crop, training scale S, normalisation,
                class list, whether training flipped images)

Only local directories here; ``pipeline.storage`` moves them to and from object storage.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vgg.model import VGG, build
from vgg.paper import FC_WIDTH, TrainScale

MODEL_FILE = "model.pt"
CARD_FILE = "card.json"
CARD_VERSION = 1


class CardError(ValueError):
    """A model directory that cannot be loaded; the message is one line naming the directory and the reason."""


@dataclass(frozen=True)
class ModelCard:
    """How to rebuild a trained net and prepare its input."""

    arch: str
    num_classes: int
    crop: int
    smin: int
    smax: int
    mean: tuple[float, float, float]
    width: float = 1.0
    fc_width: int = FC_WIDTH
    std: tuple[float, float, float] | None = None
    classes: tuple[str, ...] = ()  # class names (wnids) in label order; empty when unknown
    flip: bool = True  # trained with random horizontal flips (the paper's); evaluation averages flips only then
    info: dict[str, Any] = field(default_factory=dict)  # provenance: run, epoch, step, val metrics

    @property
    def train_scale(self) -> TrainScale:
        """The training scale S (fixed) or [Smin, Smax] (jittered) the net was trained at."""
        return TrainScale(self.smin, self.smax)

    def build(self) -> VGG:
        """An untrained net of this card's shape (init left to torch; weights come from the state dict)."""
        return build(self.arch, self.num_classes, width=self.width, fc_width=self.fc_width, crop=self.crop,
                     init="none")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the format version."""
        doc = asdict(self)
        doc["version"] = CARD_VERSION
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ModelCard:
        """Inverse of ``to_dict``; raises CardError on a missing or unknown field."""
        doc = dict(doc)
        version = doc.pop("version", None)
        if version != CARD_VERSION:
            raise CardError(f"model card version {version!r} is not {CARD_VERSION}")
        try:
            card = cls(**doc)
        except TypeError as e:
            raise CardError(f"bad model card: {e}") from None
        return cls(
            arch=str(card.arch), num_classes=int(card.num_classes), crop=int(card.crop), smin=int(card.smin),
            smax=int(card.smax), mean=tuple(float(v) for v in card.mean),  # type: ignore[arg-type]
            width=float(card.width), fc_width=int(card.fc_width),
            std=None if card.std is None else tuple(float(v) for v in card.std),  # type: ignore[arg-type]
            classes=tuple(str(c) for c in card.classes), flip=bool(card.flip), info=dict(card.info),
        )


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory and rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(directory: str | os.PathLike, model: torch.nn.Module, card: ModelCard) -> Path:
    """Write ``model.pt`` and ``card.json`` into ``directory`` (created if missing); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_write(directory / MODEL_FILE, lambda p: torch.save(state, p))
    text = json.dumps(card.to_dict(), indent=2, sort_keys=True)
    _atomic_write(directory / CARD_FILE, lambda p: Path(p).write_text(text))
    return directory


def load_card(directory: str | os.PathLike) -> ModelCard:
    """The card of a model directory, or a one-line CardError."""
    path = Path(directory) / CARD_FILE
    try:
        return ModelCard.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CardError(f"{directory}: no {CARD_FILE} (not a verydeep model directory or checkpoint)") from None
    except json.JSONDecodeError as e:
        raise CardError(f"{path}: not valid JSON ({e})") from None
    except CardError as e:
        raise CardError(f"{path}: {e}") from None


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[VGG, ModelCard]:
    """Rebuild the net of a model directory with its weights, in eval mode; one-line CardError when it cannot."""
    card = load_card(directory)
    path = Path(directory) / MODEL_FILE
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CardError(f"{directory}: no {MODEL_FILE}") from None
    except Exception as e:  # torch raises several types for a corrupt or truncated file
        raise CardError(f"{path}: cannot read weights ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    model = card.build()
    try:
        model.load_state_dict(state)
    except ValueError as e:
        raise CardError(f"{path}: weights do not match the card ({e})") from None
    return model.eval(), card
