"""The paper as data: its numbers (Simonyan & Zisserman, ICLR 2015, arXiv:1409.1556 v6) and its ladder of runs.

Every constant the code takes from the paper is here, once, with the section it comes from; the model, the
augmentation, the test protocols, the training config, the recipes and the summary read them from this module.
Table 1 itself (the layer columns) is ``vgg.model.CONFIGS``. Where the paper leaves a choice open, the comment
beside the value says so and what was chosen.

The ladder (Sec. 3.1): net A is trained from random init at S=256; a deeper net starts from net A's first four conv
layers and three FC layers (the rest random, the LR unchanged); every net then goes on at S=384 from all of its own
S=256 weights at LR 1e-3, and to scale jittering S in [256, 512] from all of its S=384 weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ---- Sec. 2.1: architecture -----------------------------------------------------------------------------------------

CROP = 224  # training input: a fixed-size 224x224 RGB crop
NUM_CLASSES = 1000  # ILSVRC-2012 (Sec. 4)
FC_WIDTH = 4096  # FC6 and FC7
# A-LRN's LRN: "those of (Krizhevsky et al., 2012)": b = a / (k + alpha * sum_{n neighbours} a^2)^beta.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0

# ---- Sec. 3.1: training ---------------------------------------------------------------------------------------------

BATCH_SIZE = 256
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4  # L2 penalty multiplier
DROPOUT = 0.5  # on FC6 and FC7
LR = 1e-2  # initial LR of a run from random init or from net A's layers ("the same learning rate")
FINE_TUNE_LR = 1e-3  # initial LR of a run that starts from all weights of the same net trained at a smaller S
LR_FACTOR = 0.1  # the LR is divided by 10 when validation accuracy stops improving...
LR_DECAYS = 3  # ...3 times in all
EPOCHS = 74  # training stopped after 370K iterations (74 epochs)
# Random init: "normal distribution with zero mean and 10^-2 variance", i.e. std 0.1 as written; read as std 0.01,
# as Caffe's convention and most re-implementations (torchvision's Linear init among them) have it.
INIT_STD = 0.01
# Net A's first four conv layers (by the paper's layer names): what a deeper net takes from A, with its three FC layers.
TRANSFER_CONVS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2")
PCA_STD = 0.1  # AlexNet's colour shift (Krizhevsky et al. 2012, Sec. 4.1): alpha_i ~ N(0, 0.1)


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


    def at_crop(self, crop: int) -> TrainScale:
        """This scale for a crop of ``crop`` pixels, keeping the paper's S/crop ratio (S * crop / 224, rounded)."""
        return TrainScale(at_crop(self.smin, crop), at_crop(self.smax, crop))


def at_crop(size: int, crop: int) -> int:
    """A side of ``size`` pixels at the paper's crop, for a crop of ``crop`` pixels (same ratio, rounded)."""
    return round(size * crop / CROP)


SCALE = 256  # every configuration was trained first at S=256
SCALE_FINE = 384  # the second fixed scale, fine-tuned from S=256
SCALE_JITTER = (256, 512)  # multi-scale training: S drawn per image from [Smin, Smax]
TRAIN_SCALES = (TrainScale(SCALE, SCALE), TrainScale(SCALE_FINE, SCALE_FINE), TrainScale(*SCALE_JITTER))

# ---- Sec. 3.2 / 4: testing ------------------------------------------------------------------------------------------

GRID = 5  # multi-crop: a 5x5 regular grid of crops per scale, times 2 flips = 50 crops per scale
Q_STEP = 32  # multi-scale test at a fixed S: Q = {S - 32, S, S + 32} (Sec. 4.2)

# ---- Tables ---------------------------------------------------------------------------------------------------------

# Table 2: parameters in millions, as printed.
TABLE2_PARAMS_M = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
# The exact counts and multiply-adds (GMACs, one 224x224 image) that Table 1's layers give at 1000 classes.
EXACT_PARAMS = {
    "A": 132_863_336,
    "A-LRN": 132_863_336,
    "B": 133_047_848,
    "C": 133_638_952,
    "D": 138_357_544,
    "E": 143_667_240,
}
EXACT_GMACS = {"A": 7.609, "A-LRN": 7.609, "B": 11.308, "C": 11.771, "D": 15.470, "E": 19.632}

# Table 3: (top-1, top-5) validation error in % at a single test scale, by (net, training scale).
TABLE3 = {
    ("A", TRAIN_SCALES[0]): (29.6, 10.4),
    ("A-LRN", TRAIN_SCALES[0]): (29.7, 10.5),
    ("B", TRAIN_SCALES[0]): (28.7, 9.9),
    ("C", TRAIN_SCALES[0]): (28.1, 9.4),
    ("C", TRAIN_SCALES[1]): (28.1, 9.3),
    ("C", TRAIN_SCALES[2]): (27.3, 8.8),
    ("D", TRAIN_SCALES[0]): (27.0, 8.8),
    ("D", TRAIN_SCALES[1]): (26.8, 8.7),
    ("D", TRAIN_SCALES[2]): (25.6, 8.1),
    ("E", TRAIN_SCALES[0]): (27.3, 9.0),
    ("E", TRAIN_SCALES[1]): (26.9, 8.7),
    ("E", TRAIN_SCALES[2]): (25.5, 8.0),
}

# ---- Sec. 3.1: the ladder -------------------------------------------------------------------------------------------

# How a run takes the previous rung's weights: net A's first four convs and FC layers, or every weight.
TRANSFER, ALL = "transfer", "all"
# Nets trained from random init. The paper names net A, "shallow enough to be trained with random initialisation",
# and pre-initialises the deeper nets from it; A-LRN is not deeper (A plus an LRN layer, which has no weights) and the
# paper says nothing more of how it started, so it is trained from random init as A is.
RANDOM_INIT = ("A", "A-LRN")


def lr_for(init: str | None) -> float:
    """The initial LR of a run by how it starts: 1e-3 from all weights of a smaller S, else 1e-2 (Sec. 3.1)."""
    return FINE_TUNE_LR if init == ALL else LR


@dataclass(frozen=True)
class Rung:
    """One run of the ladder: the net, its training scale, and what it takes from the rung before (None: nothing)."""

    arch: str
    scale: TrainScale
    init: str | None

    @property
    def lr(self) -> float:
        """The rung's initial LR."""
        return lr_for(self.init)

    @property
    def name(self) -> str:
        """``E-S256``, ``E-S384``, ``E-S256-512``: the net and its scale."""
        s = self.scale
        return f"{self.arch}-S{s.smin}" + (f"-{s.smax}" if s.jittered else "")


def ladder(arch: str) -> tuple[Rung, ...]:
    """The runs that end with ``arch`` at jittered S, in order; each starts from the one before (but the first)."""
    if arch not in TABLE2_PARAMS_M:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(TABLE2_PARAMS_M)}")
    fixed, fine, jittered = TRAIN_SCALES
    start = (Rung(arch, fixed, None),) if arch in RANDOM_INIT else (Rung("A", fixed, None), Rung(arch, fixed, TRANSFER))
    return (*start, Rung(arch, fine, ALL), Rung(arch, jittered, ALL))


def rung_for(arch: str, scale: TrainScale) -> Rung | None:
    """The ladder's run that trains ``arch`` at ``scale``; None for a scale the paper does not train at."""
    return next((r for r in ladder(arch) if r.arch == arch and r.scale == scale), None)

# ---- Appendix B: very deep features on other datasets -------------------------------------------------------------

# A fixed net without its last layer, applied densely at each Q; the FC7 map (after ReLU) averaged over space and
# over the image and its mirror image; pooled over Q; L2-normalised; a linear SVM per class. Fusion: stacking.
VOC_SCALES = (256, 384, 512, 640, 768)  # VOC: averaged over Q ("about as well as stacking"; +0.3 % over 256-512)
CALTECH_SCALES = (256, 384, 512)  # Caltech: stacked over Q (better than averaging or max-pooling there)
CALTECH_SPLITS = 3  # random splits, mean ± std reported
CALTECH_TRAIN_PER_CLASS = {"caltech101": 30, "caltech256": 60}
CALTECH_TEST_PER_CLASS = {"caltech101": 50}  # "up to 50"; Caltech-256: the rest
HELD_OUT_FRACTION = 0.2  # of each split's training images, held out for hyper-parameters (the SVM's C)
# Table 11: VOC mAP and Caltech mean class recall in %, (mean, std over splits or None); nets D, E and their fusion.
TABLE11 = {
    "D": {"voc2007": (89.3, None), "voc2012": (89.0, None), "caltech101": (91.8, 1.0), "caltech256": (85.0, 0.2)},
    "E": {"voc2007": (89.3, None), "voc2012": (89.0, None), "caltech101": (92.3, 0.5), "caltech256": (85.1, 0.3)},
    "D & E": {"voc2007": (89.7, None), "voc2012": (89.3, None), "caltech101": (92.7, 0.5), "caltech256": (86.2, 0.3)},
}
