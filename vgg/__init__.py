"""The paper as code: VGG configurations, dense evaluation, inits and reference transforms (torch/numpy only)."""

from vgg.model import (
    ARCHS,
    CONFIGS,
    TORCHVISION_NAMES,
    VGG,
    build,
    init_from_a,
    init_glorot,
    init_paper,
    multiply_adds,
    num_params,
)

__all__ = [
    "ARCHS",
    "CONFIGS",
    "TORCHVISION_NAMES",
    "VGG",
    "build",
    "init_from_a",
    "init_glorot",
    "init_paper",
    "multiply_adds",
    "num_params",
]
