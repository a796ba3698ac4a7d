"""The paper's test protocols (Sec. 3.2, 4.1, 4.2) as data: test scales from training scales, the 5x5 crop grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Training constants of Sec. 3.1.
BATCH_SIZE = 256
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
DROPOUT = 0.5
LR = 1e-2
LR_FACTOR = 0.1
LR_DECAYS = 3
EPOCHS = 74
SCALE_JITTER = (256, 512)
GRID = 5  # multi-crop: a 5x5 regular grid of crops per scale, times 2 flips = 50 crops per scale


@dataclass(frozen=True)
class TrainScale:
    """A training scale: fixed S (smin == smax) or jittered S in [smin, smax]."""

    smin: int
    smax: int

    @property
    def jittered(self) -> bool:
        """True for scale jittering (multi-scale training)."""
        return self.smax > self.smin

    def __str__(self) -> str:
        return f"[{self.smin};{self.smax}]" if self.jittered else str(self.smin)

    FORMS = "S or SMIN,SMAX (positive integers, SMIN <= SMAX)"  # what ``of`` reads, for error lines

    @classmethod
    def of(cls, value: Any) -> TrainScale:
        """S from what flags, config files and stored configs hold: 256, "256", "256,512", ["256", "512"],
        [256, 512] or a TrainScale (a fixed S is a range of one); ValueError(FORMS) on anything else."""
        if isinstance(value, TrainScale):
            value = [value.smin, value.smax]
        parts: list[Any] = []
        for item in value if isinstance(value, (list, tuple)) else [value]:
            parts += item.replace(",", " ").split() if isinstance(item, str) else [item]
        try:
            nums = [int(p) if isinstance(p, str) else p for p in parts]
        except ValueError:
            raise ValueError(cls.FORMS) from None
        if not (len(nums) in (1, 2) and all(type(n) is int for n in nums) and 0 < nums[0] <= nums[-1]):
            raise ValueError(cls.FORMS)
        return cls(nums[0], nums[-1])

    def plain(self) -> int | list[int]:
        """S as a config file writes it: 256, or [256, 512] when jittered (``of`` reads it back)."""
        return [self.smin, self.smax] if self.jittered else self.smin


def single_scale_q(scale: TrainScale) -> int:
    """Sec. 4.1: Q = S for fixed S, Q = 0.5 (Smin + Smax) for jittered S."""
    return (scale.smin + scale.smax) // 2 if scale.jittered else scale.smin


def multi_scale_q(scale: TrainScale) -> tuple[int, int, int]:
    """Sec. 4.2: Q = {S-32, S, S+32} for fixed S, {Smin, 0.5 (Smin + Smax), Smax} for jittered S."""
    if scale.jittered:
        return scale.smin, (scale.smin + scale.smax) // 2, scale.smax
    return scale.smin - 32, scale.smin, scale.smin + 32


def grid_offsets(length: int, crop: int, n: int = GRID) -> list[int]:
    """``n`` crop offsets evenly spaced along a side of ``length``: the first at 0, the last flush with the end."""
    if length < crop:
        raise ValueError(f"a side of {length} px is shorter than the crop {crop}")
    if n == 1:
        return [(length - crop) // 2]
    return [round(i * (length - crop) / (n - 1)) for i in range(n)]


def grid_crops(height: int, width: int, crop: int, n: int = GRID) -> list[tuple[int, int]]:
    """(top, left) of the n x n regular grid of crop x crop windows over a (height, width) image."""
    return [(t, l) for t in grid_offsets(height, crop, n) for l in grid_offsets(width, crop, n)]
