"""What a training job prints on rank 0: a progress line every tenth of an epoch, one line per epoch, with ETAs.

The numbers are those the loop logs to MLflow at the same moment (one window of steps, summed over the workers):
the lines format them, nothing here measures twice. A line reads like torchvision's reference ``train.py``::

    epoch 3/50 step 22/44: loss 1.234, top-1 err 45.3 %, lr 1.0e-02, 312 img/s, data wait 38 %, ETA epoch 0:05,
        run <= 4:12     (one line)
    epoch 3/50 done in 9.8 s, 305 img/s: val top-1 err 17.83 %, top-5 err 3.98 % (359 images, Q=40) -> keep

The run's ETA is an upper bound ("<="): the schedule may stop before its epoch budget, at a plateau after the last
LR decay. A progress line is printed at most every ``PROGRESS_EVERY_S`` seconds (the first window's always): a tenth
of an ImageNet epoch takes minutes, so every window shows, while a small set's epochs take seconds and its epoch
lines already say how it goes (MLflow gets every window either way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

PROGRESS_EVERY_S = 30.0


def duration(seconds: float) -> str:
    """Seconds as ``h:mm:ss`` or ``m:ss`` (what an ETA reads like)."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class EpochClock:
    """Times the epochs of one run for the ETA: the current epoch's training steps, and the last whole epoch
    (training and validation) as the estimate of each epoch still to come."""

    steps_per_epoch: int
    max_epochs: int
    started: float = field(default_factory=time.perf_counter)  # when this epoch's first trained step began
    steps: int = 0  # steps trained in this epoch by this process (a resumed epoch starts past its first steps)
    train_s: float = 0.0  # time of this epoch's training, set when its last step is done
    last_epoch_s: float | None = None  # the previous epoch's wall time, validation included
    last_line: float | None = None  # when the last progress line was printed

    def line_due(self) -> bool:
        """Whether a progress line is due now (the first, or ``PROGRESS_EVERY_S`` after the last); counts it."""
        now = time.perf_counter()
        if self.last_line is not None and now - self.last_line < PROGRESS_EVERY_S:
            return False
        self.last_line = now
        return True

    def start_epoch(self) -> None:
        """A new epoch's training begins now."""
        self.started, self.steps, self.train_s = time.perf_counter(), 0, 0.0

    def step_done(self) -> None:
        """One more training step of this epoch is done."""
        self.steps += 1
        self.train_s = time.perf_counter() - self.started

    def etas(self, epoch: int, step_in_epoch: int) -> tuple[float, float]:
        """Seconds left in this epoch's training, and at most in the run (``epoch`` is 0-based)."""
        per_step = self.train_s / max(1, self.steps)
        epoch_left = (self.steps_per_epoch - step_in_epoch) * per_step
        whole = self.last_epoch_s if self.last_epoch_s is not None else self.steps_per_epoch * per_step
        return epoch_left, epoch_left + max(0, self.max_epochs - epoch - 1) * whole

    def end_epoch(self) -> float:
        """This epoch is over (validation included); its wall time."""
        self.last_epoch_s = time.perf_counter() - self.started
        return self.last_epoch_s


def progress_line(epoch: int, max_epochs: int, step_in_epoch: int, steps_per_epoch: int, window: dict[str, float],
                  eta_epoch: float, eta_run: float) -> str:
    """The progress line of one window of steps (``window``: the metrics logged for it, see ``window_metrics``)."""
    return (f"epoch {epoch + 1}/{max_epochs} step {step_in_epoch}/{steps_per_epoch}: "
            f"loss {window['train/loss']:.4g}, top-1 err {window['train/top1_err']:.1f} %, "
            f"lr {window['train/lr']:.1e}, {window['perf/images_per_s']:.0f} img/s, "
            f"data wait {window['perf/data_wait_pct']:.0f} %, "
            f"ETA epoch {duration(eta_epoch)}, run <= {duration(eta_run)}")


def epoch_line(epoch: int, max_epochs: int, seconds: float, images_per_s: float, val: dict[str, float], q: int,
               outcome: str) -> str:
    """The line of a finished epoch (``epoch`` 1-based): its time and rate, validation errors, the schedule's word."""
    return (f"epoch {epoch}/{max_epochs} done in {duration(seconds) if seconds >= 60 else f'{seconds:.1f} s'}, "
            f"{images_per_s:.0f} img/s: val top-1 err {val['val/top1_err']:.2f} %, "
            f"top-5 err {val['val/top5_err']:.2f} % ({int(val['val/images'])} images, Q={q}) -> {outcome}")
