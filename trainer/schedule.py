"""The paper's LR schedule as a pure function of the validation history (Sec. 3.1), plus linear warm-up.

The LR starts at the configured value and is divided by 10 when validation accuracy stops improving, 3 times in
all; training stops at the epoch budget, or at the first plateau after the last decay. ``step`` maps (state,
this epoch's validation top-1) to (next state, decision) and nothing else, so the state, stored in every checkpoint,
is all a resumed run needs to take the same decisions as an uninterrupted one.

"Stops improving" follows torch's ``ReduceLROnPlateau`` (mode max, absolute threshold): an epoch improves when its
top-1 beats the best so far by more than ``min_delta``; ``patience`` epochs without improvement make a plateau.
The best is kept across decays and the count restarts at each decay, so every LR gets ``patience`` epochs to show
a gain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from typing import Any

from trainer.config import ScheduleConfig


class Decision(str, Enum):
    """What the training loop does after an epoch."""

    KEEP = "keep"  # train on at the same LR
    DECAY = "decay"  # train on at the new, lower LR (state.lr)
    STOP = "stop"  # training is over (state.stop_reason says why)


@dataclass(frozen=True)
class ScheduleState:
    """Where the schedule stands after ``epoch`` completed epochs; plain data, stored in checkpoints."""

    lr: float  # the LR for the next epoch (before any warm-up ramp)
    epoch: int = 0  # completed (validated) epochs
    decays: int = 0  # LR decays so far
    best: float | None = None  # best validation top-1 so far (a fraction); None before the first epoch
    best_epoch: int | None = None  # the epoch (1-based) that reached ``best``
    epochs_since_best: int = 0  # epochs without improvement since the last improvement or decay
    stopped: bool = False
    stop_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON-safe plain data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleState:
        """The state from ``to_dict``'s output; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"bad schedule state keys {unknown}: expected some of {', '.join(sorted(names))}")
        return cls(**data)


def start(lr: float) -> ScheduleState:
    """The state before the first epoch, at initial LR ``lr`` (the config's ``optim.effective_lr``)."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"bad lr {lr!r}: expected a positive number")
    return ScheduleState(lr=lr)


def step(state: ScheduleState, val_top1: float, cfg: ScheduleConfig) -> tuple[ScheduleState, Decision]:
    """Take one epoch's validation top-1 (a fraction in [0, 1]) and decide: keep the LR, decay it, or stop."""
    if state.stopped:
        raise ValueError(f"schedule already stopped at epoch {state.epoch} ({state.stop_reason}): no further epochs")
    if not 0.0 <= val_top1 <= 1.0:  # also rejects NaN
        raise ValueError(f"bad val_top1 {val_top1!r}: expected an accuracy in [0, 1]")
    epoch = state.epoch + 1
    improved = state.best is None or val_top1 > state.best + cfg.min_delta
    if improved:
        state = replace(state, epoch=epoch, best=val_top1, best_epoch=epoch, epochs_since_best=0)
    else:
        state = replace(state, epoch=epoch, epochs_since_best=state.epochs_since_best + 1)

    if epoch >= cfg.epochs:
        return replace(state, stopped=True, stop_reason=f"reached {cfg.epochs} epochs"), Decision.STOP
    if state.epochs_since_best < cfg.patience:
        return state, Decision.KEEP
    if state.decays >= cfg.max_decays:
        reason = f"plateau after {state.decays} LR decays"
        return replace(state, stopped=True, stop_reason=reason), Decision.STOP
    decayed = replace(state, lr=state.lr * cfg.lr_factor, decays=state.decays + 1, epochs_since_best=0)
    return decayed, Decision.DECAY


def lr_at(step: int, lr: float, warmup_steps: int = 0, start_lr: float = 0.0) -> float:
    """LR for optimiser step ``step`` (0-based): a linear ramp from ``start_lr`` that reaches ``lr`` at step
    ``warmup_steps - 1``, then ``lr``.

    For linear scaling (Goyal et al. 2017) pass the unscaled LR as ``start_lr``, so the ramp begins near the paper's
    LR. The first step already moves (1/warmup_steps of the way): a step at LR 0 would be wasted.
    """
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"bad step {step} or warmup_steps {warmup_steps}: expected integers >= 0")
    if step >= warmup_steps:
        return lr
    return start_lr + (lr - start_lr) * (step + 1) / warmup_steps


def extend(state: ScheduleState, cfg: ScheduleConfig) -> ScheduleState:
    """A schedule stopped by the epoch budget goes on when the budget has grown (``--epochs`` raised on resume);
    one stopped by a plateau after the last decay stays stopped."""
    if state.stopped and state.epoch < cfg.epochs and state.stop_reason.startswith("reached "):
        return replace(state, stopped=False, stop_reason="")
    return state
