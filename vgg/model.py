"""The six ConvNet configurations of Table 1 as one table and one builder, with the dense (fully-convolutional) form.

Layout and parameter names follow torchvision's VGG (``features.N`` / ``classifier.{0,3,6}``), so that
torchvision's vgg11/13/16/19 state dicts load into A/B/D/E and back. There is no adaptive pooling: FC6 sees the
(crop/32)x(crop/32) map of the training crop, and ``forward_dense`` applies the same weights as convolutions to an
image of any size, as in Sec. 3.2 of the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from vgg.paper import (
    CROP,
    DROPOUT,
    FC_WIDTH,
    INIT_STD,
    LRN_ALPHA,
    LRN_BETA,
    LRN_K,
    LRN_SIZE,
    NUM_CLASSES,
    TRANSFER_CONVS,
)

# Token vocabulary: an int N is conv3-N (3x3, stride 1, pad 1) + ReLU; (1, N) is conv1-N (config C's 1x1) + ReLU;
# "M" is a 2x2/2 max-pool; "LRN" is AlexNet's local response normalisation (A-LRN, after the first conv's ReLU).
Token = Union[int, tuple[int, int], str]

CONFIGS: dict[str, list[Token]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (1, 256), "M", 512, 512, (1, 512), "M", 512, 512, (1, 512), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
ARCHS: tuple[str, ...] = tuple(CONFIGS)

# torchvision's name for each configuration that it has (no A-LRN, no C).
TORCHVISION_NAMES: dict[str, str] = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}

NUM_POOLS = 5
STRIDE = 2**NUM_POOLS  # 32: the total downsampling of the conv stack


def _check_arch(arch: str) -> None:
    if arch not in CONFIGS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")


def _check_crop(crop: int) -> None:
    if not isinstance(crop, int) or crop < STRIDE or crop % STRIDE:
        raise ValueError(
            f"crop {crop!r} is not a positive multiple of {STRIDE} (five 2x2/2 max-pools): use e.g. 224, 96, 64 or 32"
        )


def _width(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def make_features(cfg: list[Token], width: float = 1.0, in_channels: int = 3) -> nn.Sequential:
    """Build the conv stack from a Table 1 column; channel counts are scaled by ``width``."""
    layers: list[nn.Module] = []
    c = in_channels
    for token in cfg:
        if token == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif token == "LRN":  # torch's LocalResponseNorm divides alpha by n: given alpha * n, it is AlexNet's formula
            layers.append(nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K))
        else:
            kernel, out = token if isinstance(token, tuple) else (3, token)
            out = _width(out, width)
            layers += [nn.Conv2d(c, out, kernel_size=kernel, stride=1, padding=kernel // 2), nn.ReLU(inplace=True)]
            c = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """A VGG net of Table 1: conv stack, then FC6/FC7/FC8 (dropout on FC6 and FC7), logits out (soft-max in the loss)."""

    def __init__(
        self,
        arch: str,
        num_classes: int = NUM_CLASSES,
        width: float = 1.0,
        fc_width: int = FC_WIDTH,
        crop: int = CROP,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        _check_arch(arch)
        _check_crop(crop)
        if num_classes < 1 or fc_width < 1 or width <= 0:
            raise ValueError(f"num_classes, fc_width and width must be positive, got {num_classes}, {fc_width}, {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.arch, self.num_classes, self.width, self.fc_width, self.crop = arch, num_classes, width, fc_width, crop
        self.features = make_features(CONFIGS[arch], width)
        self.out_channels = _width(512, width)
        self.fc_kernel = crop // STRIDE  # FC6 sees a fc_kernel x fc_kernel map of the training crop
        self.classifier = nn.Sequential(
            nn.Linear(self.out_channels * self.fc_kernel**2, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Conv stack: (N, 3, H, W) -> (N, C, H/32, W/32)."""
        return self.features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """FC head on the feature map of a crop-size input: (N, C, k, k) -> (N, classes) logits."""
        if feats.shape[-2:] != (self.fc_kernel, self.fc_kernel):
            raise ValueError(
                f"the FC head takes a {self.fc_kernel}x{self.fc_kernel} feature map (a {self.crop}x{self.crop} input), "
                f"got {tuple(feats.shape[-2:])}: use forward_dense for other image sizes"
            )
        return self.classifier(torch.flatten(feats, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of crop-size images."""
        return self.forward_head(self.forward_features(x))

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Class-score map (N, classes, h, w) for images of at least the crop size: FC6 as a kxk conv, FC7/FC8 as 1x1.

        The convolutions reuse the FC weights (no copy), so the map at a crop-size input equals ``forward``'s logits.
        Spatial averaging and soft-max are the evaluator's business (Sec. 3.2).
        """
        fc8 = self.classifier[6]
        return F.conv2d(self.forward_dense_fc7(x), fc8.weight[:, :, None, None], fc8.bias)

    def forward_dense_fc7(self, x: torch.Tensor) -> torch.Tensor:
        """The dense net without its last layer: the FC7 map after ReLU (and dropout), (N, fc_width, h, w).

        Appendix B's image descriptor is this map, spatially averaged (the paper's "very deep features").
        """
        if min(x.shape[-2:]) < self.crop:
            raise ValueError(f"dense evaluation needs images of at least {self.crop}x{self.crop}, got {tuple(x.shape[-2:])}")
        fc6, relu6, drop6, fc7, relu7, drop7, _ = self.classifier
        y = self.forward_features(x)
        y = F.conv2d(y, fc6.weight.view(self.fc_width, self.out_channels, self.fc_kernel, self.fc_kernel), fc6.bias)
        y = drop6(relu6(y))
        return drop7(relu7(F.conv2d(y, fc7.weight[:, :, None, None], fc7.bias)))

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:
        """The conv layers in order, named as in the paper: ``conv{block}_{index}``."""
        named, block, index = [], 1, 0
        for module in self.features:
            if isinstance(module, nn.MaxPool2d):
                block, index = block + 1, 0
            elif isinstance(module, nn.Conv2d):
                index += 1
                named.append((f"conv{block}_{index}", module))
        return named

    def fc_layers(self) -> list[tuple[str, nn.Linear]]:
        """FC6, FC7, FC8 in order."""
        return [("fc6", self.classifier[0]), ("fc7", self.classifier[3]), ("fc8", self.classifier[6])]

    def describe(self) -> str:
        """Short human description of the variant (arch, widths, crop, classes)."""
        return f"VGG-{self.arch} (width {self.width:g}, FC {self.fc_width}, crop {self.crop}, {self.num_classes} classes)"

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Load weights; with ``strict`` a mismatch is one ValueError line naming the problem and what fits."""
        if strict:
            problem = state_dict_mismatch(self, state_dict)
            if problem:
                hint = f"; torchvision's {TORCHVISION_NAMES[self.arch]} fits the full-size net" if self.arch in TORCHVISION_NAMES else ""
                raise ValueError(f"state dict does not fit {self.describe()}: {problem}{hint}")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def state_dict_mismatch(model: nn.Module, state_dict: Mapping[str, Any]) -> str:
    """Empty if ``state_dict`` fits ``model`` exactly, else a one-line description of the first problems."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} is {tuple(state_dict[k].shape)}, expected {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {few(shapes)}")
    return "; ".join(parts)


def init_paper(model: VGG, std: float = INIT_STD) -> VGG:
    """The paper's random init: weights ~ N(0, std^2), biases 0.

    The paper says "variance 10^-2" (std 0.1); most re-implementations, torchvision's Linear init among them, read it
    as std 0.01, which is the default here. Thin nets (width < 1) lose the signal through 8+ layers at std 0.01:
    use Glorot there.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            nn.init.zeros_(m.bias)
    return model


def init_glorot(model: VGG) -> VGG:
    """Glorot & Bengio (2010) uniform init, biases 0: the paper's post-submission alternative to pre-training."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


@torch.no_grad()
def init_from_a(model: VGG, net_a: VGG) -> VGG:
    """The paper's pre-initialisation (Sec. 3.1): copy net A's first four conv layers and its three FC layers.

    A's first four conv layers are conv1_1, conv2_1, conv3_1 and conv3_2; each goes to the layer of the same name
    in the deeper net (same shape in every configuration). The other layers keep their random init.
    """
    if net_a.arch not in ("A", "A-LRN"):
        raise ValueError(f"init_from_a takes net A (or A-LRN) as the source, got VGG-{net_a.arch}")
    src = dict(net_a.conv_layers()) | dict(net_a.fc_layers())
    dst = dict(model.conv_layers()) | dict(model.fc_layers())
    for name in (*TRANSFER_CONVS, "fc6", "fc7", "fc8"):
        s, d = src[name], dst[name]
        if s.weight.shape != d.weight.shape:
            raise ValueError(
                f"cannot initialise {model.describe()} from {net_a.describe()}: {name} is "
                f"{tuple(s.weight.shape)} in the source, {tuple(d.weight.shape)} in the target (width, FC width, "
                "crop and classes must match)"
            )
        d.weight.copy_(s.weight)
        d.bias.copy_(s.bias)
    return model


@torch.no_grad()
def init_all_but_last(model: VGG, source: VGG) -> VGG:
    """Fine-tuning's start: every weight of ``source`` except FC8, which keeps ``model``'s own (random) init.

    For a target with another class count; every other layer must have the same shape in both nets.
    """
    fc8 = "classifier.6."
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(fc8)}
    copied = {k: v for k, v in source.state_dict().items() if not k.startswith(fc8)}
    missing = [k for k in own if k not in copied or tuple(copied[k].shape) != tuple(own[k].shape)]
    if missing or len(copied) != len(own):
        k = (missing or sorted(set(copied) - set(own)))[0]
        raise ValueError(f"cannot initialise {model.describe()} from {source.describe()}: {k} does not fit (every "
                         "layer but FC8 must match: arch, width, FC width and crop)")
    for k, v in copied.items():
        own[k].copy_(v)
    return model


INITS = ("paper", "glorot", "none")


def build(
    arch: str,
    num_classes: int = NUM_CLASSES,
    *,
    width: float = 1.0,
    fc_width: int = FC_WIDTH,
    crop: int = CROP,
    dropout: float = DROPOUT,
    init: str = "paper",
    init_std: float = INIT_STD,
) -> VGG:
    """Build configuration ``arch`` of Table 1 ("A", "A-LRN", "B", "C", "D", "E") with the given init.

    ``width`` scales every conv's channel count, ``fc_width`` is FC6/FC7's width, ``crop`` the training crop (a
    multiple of 32), ``init`` one of "paper" (N(0, init_std^2)), "glorot" or "none" (torch's default init).
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
    model = VGG(arch, num_classes, width=width, fc_width=fc_width, crop=crop, dropout=dropout)
    if init == "paper":
        init_paper(model, init_std)
    elif init == "glorot":
        init_glorot(model)
    return model


def num_params(model: nn.Module) -> int:
    """Number of weights and biases."""
    return sum(p.numel() for p in model.parameters())


def multiply_adds(model: VGG, size: int | None = None) -> int:
    """Multiply-accumulates of the conv and FC layers for one ``size`` x ``size`` image (default: the crop).

    At the crop size this is the FC form's cost; above it, the dense form's (FC6 as a kxk conv over the map).
    """
    h = w = size or model.crop
    macs = 0
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0]
            macs += h * w * module.out_channels * module.in_channels * k * k
        elif isinstance(module, nn.MaxPool2d):
            h, w = h // 2, w // 2
    oh, ow = h - model.fc_kernel + 1, w - model.fc_kernel + 1
    fc6, _, _, fc7, _, _, fc8 = model.classifier
    macs += oh * ow * (fc6.in_features * fc6.out_features + fc7.in_features * fc7.out_features)
    macs += oh * ow * fc8.in_features * fc8.out_features
    return macs
