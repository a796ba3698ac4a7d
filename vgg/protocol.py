"""The paper's test protocols (Sec. 3.2, 4.1, 4.2) as data: test scales from training scales, the 5x5 crop grid."""

from __future__ import annotations

from vgg.paper import GRID, Q_STEP, TrainScale

# GRID and TrainScale are the paper's (vgg.paper); the protocol's callers may take them from here with it.
__all__ = ["GRID", "TrainScale", "grid_crops", "grid_offsets", "multi_scale_q", "single_scale_q"]


def single_scale_q(scale: TrainScale) -> int:
    """Sec. 4.1: Q = S for fixed S, Q = 0.5 (Smin + Smax) for jittered S."""
    return (scale.smin + scale.smax) // 2 if scale.jittered else scale.smin


def multi_scale_q(scale: TrainScale) -> tuple[int, int, int]:
    """Sec. 4.2: Q = {S-32, S, S+32} for fixed S, {Smin, 0.5 (Smin + Smax), Smax} for jittered S."""
    if scale.jittered:
        return scale.smin, (scale.smin + scale.smax) // 2, scale.smax
    return scale.smin - Q_STEP, scale.smin, scale.smin + Q_STEP


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
