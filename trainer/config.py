"""One typed config per training job: nested dataclasses, the paper's defaults; flags, recipes and MLflow params are
made from them by ``pipeline.cli`` (one flag per field, named after it), so a new field is a new flag, a new MLflow
param and a new checkpoint entry with nothing else to edit.

Precedence, lowest first: the defaults (the paper's, Sec. 3.1) < a recipe (``--config``, YAML or Python) < the
smoke preset (``--smoke``) < flags given on the command line. Quantities that follow from others (per-worker batch,
gradient accumulation, effective LR, warm-up, validation Q) are properties, never fields.

The training scale S is one field, a range: ``--scale 256`` (fixed) or ``--scale 256,512`` (jittered). Before, it
was two fields (``scale``, ``scale_jitter``); configs stored in checkpoints, recipes and the ``--scale-jitter SMIN
SMAX`` flag that use them still read.

Longer than the house's 450 lines as one cohesive thing: the schema, its layering (defaults, recipe, preset, flags)
and its command line change together whenever a field is added.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pipeline import cli
from pipeline.cli import Checked, option
from pipeline.cli import require as _check
from pipeline.cluster import ADDRESS_FORMS, is_address
from vgg.model import ARCHS, INITS, STRIDE
from vgg.paper import (
    ALL,
    BATCH_SIZE,
    CROP,
    DROPOUT,
    EPOCHS,
    FC_WIDTH,
    INIT_STD,
    LR,
    LR_DECAYS,
    LR_FACTOR,
    MOMENTUM,
    PCA_STD,
    SCALE,
    SCALE_JITTER,
    TRAIN_SCALES,
    TRANSFER,
    WEIGHT_DECAY,
    TrainScale,
    at_crop,
    lr_for,
    rung_for,
)
from vgg.protocol import single_scale_q

RECIPES = Path(__file__).resolve().parent / "recipes"

REFERENCE_BATCH = BATCH_SIZE  # linear LR scaling is relative to the paper's batch (Goyal et al. 2017)
SCALED_WARMUP_EPOCHS = 5.0  # Goyal et al. 2017: 5 epochs of linear warm-up when the LR is scaled up

INIT_LAYERS = ("auto", TRANSFER, ALL)
DECODERS = ("auto", "dali", "cpu")
GPU_MODES = ("auto", "true", "false")

# Fields of older versions still read from stored configs and recipes (name -> section); see ``_layer``.
LEGACY = {"scale_jitter": "data"}

# The --smoke preset: arch, init source and schedule as given, everything that costs compute shrunk so that a run
# takes about a minute on a CPU. Glorot because N(0, 0.01^2) loses the signal through a thin net (vgg.init_paper).
SMOKE = {"width": 0.125, "fc_width": 128, "crop": 32, "init": "glorot", "val_q": None, "shuffle_buffer": 256,
         "max_train_images": 512, "max_val_images": 128, "epochs": 2, "batch_size": 32, "micro_batch": None}


@dataclass(frozen=True)
class ModelConfig(Checked):
    """The network (Table 1) and its initialisation (Sec. 3.1)."""

    arch: str = option("E", "configuration of Table 1", choices=ARCHS)
    width: float = option(1.0, "multiplier on every conv's channel count (1 = the paper's 64..512)")
    fc_width: int = option(FC_WIDTH, "width of FC6 and FC7")
    crop: int = option(CROP, f"training crop side in pixels; a multiple of {STRIDE} (five 2x2/2 max-pools)")
    dropout: float = option(DROPOUT, "dropout probability on FC6 and FC7")
    init: str = option(
        "paper", "random init: paper = N(0, init_std^2) weights and zero biases; glorot = Glorot & Bengio (the "
        "paper's later alternative, needed for thin nets); none = torch's default", choices=INITS)
    init_std: float = option(INIT_STD, "std of the paper init (the paper's 'variance 1e-2' read as std 0.01)")
    init_from: str | None = option(
        None, "start from trained weights: a checkpoint URI, runs:/<MLflow run id> or an MLflow run id", metavar="SRC")
    init_layers: str = option(
        "auto", "what init_from copies: transfer = net A's first four convs and FC layers into a deeper net (Sec. "
        "3.1); all = every weight (S=384 from S=256, jittered S from S=384); auto = all when the source has this "
        "arch, else transfer", choices=INIT_LAYERS)
    freeze_convs: bool = option(
        False, "train only the FC layers: the conv layers keep their init_from weights (the common fine-tuning "
        "recipe; a source with another class count gets a fresh FC8 either way)")

    def check(self) -> None:
        _check(self.width > 0, "width", self.width, "a positive number")
        _check(self.fc_width >= 1, "fc_width", self.fc_width, "a positive integer")
        _check(self.crop >= STRIDE and self.crop % STRIDE == 0, "crop", self.crop,
               f"a positive multiple of {STRIDE} (five 2x2/2 max-pools), e.g. 224, 96, 64 or 32")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a probability in [0, 1)")
        _check(self.init_std > 0, "init_std", self.init_std, "a positive number")
        _check(self.init_from is None or self.init_from.strip() != "", "init_from", self.init_from,
               "a checkpoint URI, runs:/<run id> or a run id")
        _check(not self.freeze_convs or self.init_from is not None, "freeze_convs", self.freeze_convs,
               "used with init_from (random conv layers, frozen, would learn nothing)")

    def init_layers_for(self, source_arch: str) -> str:
        """``transfer`` or ``all``: what to copy from an ``init_from`` net of configuration ``source_arch``."""
        if self.init_layers != "auto":
            return self.init_layers
        return "all" if source_arch == self.arch else "transfer"


@dataclass(frozen=True)
class DataConfig(Checked):
    """The data and its augmentation: training scale S (Sec. 3.1) and validation scale Q (Sec. 4.1)."""

    data: str | None = option(None, "manifest URI of the sharded dataset (local path or s3://); required unless "
                                    "smoke", metavar="URI")
    num_classes: int | None = option(None, "number of classes; none = from the manifest")
    scale: TrainScale = option(
        TrainScale(SCALE, SCALE), "training scale S, the shorter side before cropping: S fixed, or "
        f"SMIN,SMAX to draw S per image from [SMIN, SMAX] (the paper's multi-scale training: {SCALE_JITTER[0]},"
        f"{SCALE_JITTER[1]}); --scale-jitter SMIN SMAX is the older spelling", metavar=("S", "SMAX"),
        aliases=("--scale-jitter",), nargs="+", parse=TrainScale.of, dump=TrainScale.plain)
    flip: bool = option(True, "random horizontal flips in training")
    colour_shift: float = option(PCA_STD, "std of AlexNet's PCA colour-shift alphas; 0 disables it")
    val_q: int | None = option(
        None, "validation scale Q (shorter side, dense evaluation); none = Sec. 4.1's Q: S, or (SMIN+SMAX)/2 "
        "when jittered", metavar="Q")
    val_flip: bool = option(False, "also average over horizontal flips in validation")
    shuffle_buffer: int = option(2048, "rows in each worker's local shuffle buffer, on top of the per-epoch shard "
                                       "shuffle; 0 disables it")
    decoder: str = option("auto", "JPEG decode and augment: dali on GPU workers, cpu otherwise (auto)",
                          choices=DECODERS)
    cache_mb: int = option(
        512, "read a split once and keep it in Ray's object store when its shards total at most this many MiB (saves "
        "seconds of start-up per epoch on small data; the per-epoch shuffle then comes from the shuffle buffer "
        "alone); 0 = always stream from storage")
    max_train_images: int | None = option(None, "train on at most this many images per epoch; none = all")
    max_val_images: int | None = option(None, "validate on at most this many images; none = all")

    def check(self) -> None:
        _check(self.data is None or self.data.strip() != "", "data", self.data, "a manifest URI")
        _check(self.num_classes is None or self.num_classes >= 2, "num_classes", self.num_classes, "at least 2")
        _check(self.colour_shift >= 0, "colour_shift", self.colour_shift, "a std >= 0")
        _check(self.val_q is None or self.val_q > 0, "val_q", self.val_q, "a positive integer")
        _check(self.shuffle_buffer >= 0, "shuffle_buffer", self.shuffle_buffer, "an integer >= 0")
        _check(self.cache_mb >= 0, "cache_mb", self.cache_mb, "an integer >= 0")
        for name in ("max_train_images", "max_val_images"):
            value = getattr(self, name)
            _check(value is None or value >= 1, name, value, "a positive integer or none")

    @property
    def train_scale(self) -> TrainScale:
        """The training scale S: the ``scale`` field (the name the loop, the card and the ladder read)."""
        return self.scale

    @property
    def q(self) -> int:
        """The validation scale Q: ``val_q`` if set, else Sec. 4.1's Q for the training scale."""
        return single_scale_q(self.train_scale) if self.val_q is None else self.val_q


@dataclass(frozen=True)
class OptimConfig(Checked):
    """Mini-batch SGD with momentum (Sec. 3.1); the batch is global, split across workers."""

    batch_size: int = option(BATCH_SIZE, "global batch size (all workers together)")
    micro_batch: int | None = option(
        None, "images per forward/backward on a worker; gradients are accumulated up to the per-worker batch; "
        "none = the per-worker batch")
    lr: float = option(LR, "initial learning rate (for the reference batch of 256 when scale_lr)")
    momentum: float = option(MOMENTUM, "SGD momentum")
    weight_decay: float = option(WEIGHT_DECAY, "L2 penalty multiplier")
    scale_lr: bool = option(False, f"scale lr linearly with batch_size / {REFERENCE_BATCH} (Goyal et al. 2017); "
                                   "off keeps the paper's LR whatever the batch")
    warmup_epochs: float | None = option(
        None, f"epochs of linear LR warm-up; none = {SCALED_WARMUP_EPOCHS:g} when the LR is scaled up, else 0")

    def check(self) -> None:
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "a positive integer")
        _check(self.micro_batch is None or self.micro_batch >= 1, "micro_batch", self.micro_batch,
               "a positive integer or none")
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a positive number")
        _check(0.0 <= self.momentum < 1.0, "momentum", self.momentum, "a number in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(self.warmup_epochs is None or self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs,
               "a number >= 0 or none")

    @property
    def lr_scaled(self) -> bool:
        """True when the LR is scaled up for a batch above the paper's 256."""
        return self.scale_lr and self.batch_size > REFERENCE_BATCH

    @property
    def effective_lr(self) -> float:
        """The initial LR the optimiser uses: ``lr``, times batch / 256 when ``scale_lr`` and the batch is larger."""
        return self.lr * self.batch_size / REFERENCE_BATCH if self.lr_scaled else self.lr

    @property
    def warmup(self) -> float:
        """Warm-up length in epochs: ``warmup_epochs`` if set, else 5 for a scaled LR and 0 otherwise."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return SCALED_WARMUP_EPOCHS if self.lr_scaled else 0.0

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Warm-up length in optimiser steps."""
        return int(round(self.warmup * steps_per_epoch))


@dataclass(frozen=True)
class ScheduleConfig(Checked):
    """The LR schedule (Sec. 3.1): divide by 10 when validation accuracy stops improving, 3 times, then stop.

    The paper does not say how long "stops improving" is. patience 3: four LR phases share 74 epochs (about 18
    each), so waiting 3 epochs per plateau costs at most ~12 epochs in all, while 1-2 would decay on a single noisy
    epoch; torch's default of 10 would spend the whole budget before the third decay.
    """

    epochs: int = option(EPOCHS, "stop after this many epochs at the latest")
    lr_factor: float = option(LR_FACTOR, "multiply the LR by this at each decay")
    max_decays: int = option(LR_DECAYS, "LR decays in total; the next plateau after the last one stops training")
    patience: int = option(3, "epochs without improvement in validation top-1 before the LR decays (not stated "
                              "in the paper)")
    min_delta: float = option(
        1e-3, "absolute gain in validation top-1 accuracy (a fraction) that counts as improvement; 1e-3 = 0.1 "
        "points, 50 of ILSVRC-2012's 50,000 validation images")

    def check(self) -> None:
        _check(self.epochs >= 1, "epochs", self.epochs, "a positive integer")
        _check(0.0 < self.lr_factor < 1.0, "lr_factor", self.lr_factor, "a number in (0, 1)")
        _check(self.max_decays >= 0, "max_decays", self.max_decays, "an integer >= 0")
        _check(self.patience >= 1, "patience", self.patience, "a positive integer")
        _check(0.0 <= self.min_delta < 1.0, "min_delta", self.min_delta, "an accuracy gain in [0, 1)")


@dataclass(frozen=True)
class ClusterConfig(Checked):
    """Ray Train's scaling and fault tolerance: data-parallel workers, their resources, restarts."""

    workers: int = option(1, "data-parallel training workers (one GPU each when GPUs are used)")
    gpu: str = option("auto", "use GPUs: auto = when the cluster has them", choices=GPU_MODES)
    cpus_per_worker: float = option(
        1.0, "CPUs reserved per training worker; fractional allowed (0.5 leaves room for Ray Data on 2-core hosts)")
    max_failures: int = option(3, "restarts from the last checkpoint after a worker failure; -1 = unlimited")
    ray_address: str | None = option(
        None, "Ray to use: auto = the cluster running on this machine, local = a Ray of this job's own, host:port or "
        "ray://host:port = that cluster; none = RAY_ADDRESS, else a running cluster, else a local Ray",
        metavar="ADDR")

    def check(self) -> None:
        _check(self.workers >= 1, "workers", self.workers, "a positive integer")
        _check(self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "a positive number")
        _check(self.max_failures >= -1, "max_failures", self.max_failures, "an integer >= -1")
        _check(self.ray_address is None or is_address(self.ray_address), "ray_address", self.ray_address,
               ADDRESS_FORMS)


@dataclass(frozen=True)
class RunConfig(Checked):
    """Naming, storage, checkpoints, seed and tracking of one run."""

    name: str | None = option(None, "run name (storage folder and MLflow run); none = from arch and scale")
    storage: str = option("./runs", "where checkpoints go: a local folder or s3://bucket/prefix", metavar="URI")
    checkpoint_every_steps: int = option(0, "also checkpoint every this many optimiser steps; 0 = at epoch ends only")
    seed: int = option(0, "seed of initialisation, shuffling and augmentation")
    tracking_uri: str | None = option(None, "MLflow tracking URI; none = MLflow's own choice (MLFLOW_TRACKING_URI, "
                                            "else its local store)", metavar="URI")
    experiment: str = option("verydeep", "MLflow experiment name")
    smoke: bool = option(False, "tiny preset that trains in about a minute on a CPU (flags given still override it)")

    def check(self) -> None:
        _check(self.name is None or (self.name.strip() != "" and "/" not in self.name), "name", self.name,
               "a non-empty name without '/'")
        _check(self.storage.strip() != "", "storage", self.storage, "a folder or s3:// URI")
        _check(self.checkpoint_every_steps >= 0, "checkpoint_every_steps", self.checkpoint_every_steps,
               "an integer >= 0")
        _check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _check(self.experiment.strip() != "", "experiment", self.experiment, "a non-empty name")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training job needs; checks across sections, and the quantities derived from them."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        for f in fields(self):
            section = getattr(self, f.name)
            if not isinstance(section, SECTIONS[f.name]):
                raise ValueError(f"bad {f.name} section {section!r}: expected a {SECTIONS[f.name].__name__}")
        crop, scale = self.model.crop, self.data.scale
        _check(scale.smin >= crop, "scale", scale.plain(), f"a training scale of at least crop={crop}")
        _check(self.data.q >= crop, "val_q", self.data.q, f"a validation scale of at least crop={crop}")
        _check(self.data.data is not None or self.run.smoke, "data", None, "a manifest URI (required unless smoke)")
        workers, batch = self.cluster.workers, self.optim.batch_size
        _check(batch % workers == 0, "batch_size", batch, f"a multiple of workers={workers}")
        micro = self.micro_batch
        _check(self.per_worker_batch % micro == 0, "micro_batch", micro,
               f"a divisor of the per-worker batch {self.per_worker_batch} (batch_size {batch} / workers {workers})")

    @property
    def per_worker_batch(self) -> int:
        """Images per optimiser step on one worker: the global batch over the world size."""
        return self.optim.batch_size // self.cluster.workers

    @property
    def micro_batch(self) -> int:
        """Images per forward/backward on one worker."""
        return self.per_worker_batch if self.optim.micro_batch is None else self.optim.micro_batch

    @property
    def accumulation_steps(self) -> int:
        """Forward/backward passes per optimiser step (gradient accumulation)."""
        return self.per_worker_batch // self.micro_batch

    @property
    def run_name(self) -> str:
        """The run's name: ``run.name``, else arch and training scale (and ``-smoke``), e.g. ``D-S256-512``."""
        if self.run.name is not None:
            return self.run.name
        s = self.data.train_scale
        scale = f"{s.smin}-{s.smax}" if s.jittered else f"{s.smin}"
        return f"{self.model.arch}-S{scale}" + ("-smoke" if self.run.smoke else "")

    @property
    def paper_lr(self) -> float:
        """The paper's initial LR for this stage: 1e-3 when fine-tuning all weights (S=384, jittered S), else 1e-2."""
        m = self.model
        # auto copies all weights when the source is the same net, which the config cannot see; in the ladder the
        # S=256 runs that have a source take net A's layers, every other one all weights of its own net.
        guess = TRANSFER if self.data.train_scale == TrainScale(SCALE, SCALE) else ALL
        return lr_for(None if m.init_from is None else guess if m.init_layers == "auto" else m.init_layers)

    def deviations_from_paper(self, gpu: bool = False) -> list[str]:
        """What this run does differently from the paper (Sec. 3.1), as short human strings for MLflow; ``gpu``: the
        job's workers compute on GPUs."""
        m, d, o, s = self.model, self.data, self.optim, self.schedule
        out = []
        if gpu:  # trainer.loop.autocast: bf16 for the tensor cores; the paper says nothing of precision
            out.append("bf16 autocast on GPUs (the paper states no precision; Caffe, its framework, computes in fp32)")
        if m.width != 1.0:
            out.append(f"width {m.width:g}")
        if m.fc_width != FC_WIDTH:
            out.append(f"FC width {m.fc_width} instead of {FC_WIDTH}")
        if m.crop != CROP:
            out.append(f"crop {m.crop} instead of {CROP}")
        if m.dropout != DROPOUT:
            out.append(f"dropout {m.dropout:g} instead of {DROPOUT:g}")
        if m.init == "glorot":
            out.append("Glorot init")
        elif m.init == "none":
            out.append("torch's default init")
        elif m.init_std != INIT_STD:
            out.append(f"init std {m.init_std:g} instead of {INIT_STD:g}")
        scale = d.train_scale
        if scale not in TRAIN_SCALES:
            out.append(f"S={scale} (the paper trains at {', '.join(map(str, TRAIN_SCALES[:-1]))} or {TRAIN_SCALES[-1]})")
        rung = rung_for(m.arch, scale)  # the paper's run of this net at this S, and how it starts
        if rung is not None and rung.init == ALL and m.init_from is None:
            out.append(f"S={scale} from random init (the paper fine-tunes from the net trained at a smaller S)")
        if rung is not None and rung.init == TRANSFER and m.init_from is None and m.init == "paper":
            out.append(f"VGG-{m.arch} from random N(0, std^2) init (the paper starts it from net A's layers)")
        if d.val_q is not None and d.val_q != single_scale_q(scale):
            out.append(f"validation at Q={d.val_q} instead of Q={single_scale_q(scale)}")
        if not d.flip:
            out.append("no horizontal flips")
        if d.colour_shift == 0:
            out.append("no colour shift")
        elif d.colour_shift != PCA_STD:
            out.append(f"colour shift std {d.colour_shift:g} instead of {PCA_STD:g}")
        if d.max_train_images is not None:
            out.append(f"at most {d.max_train_images} training images per epoch")
        if d.max_val_images is not None:
            out.append(f"validation on at most {d.max_val_images} images")
        if o.batch_size != BATCH_SIZE:
            out.append(f"batch {o.batch_size} instead of {BATCH_SIZE}")
        if o.lr != self.paper_lr:
            out.append(f"LR {o.lr:g} instead of {self.paper_lr:g}")
        if o.lr_scaled:
            out.append(f"linear LR scaling: LR {o.effective_lr:g} for batch {o.batch_size}")
        if o.warmup > 0:
            out.append(f"{o.warmup:g} warm-up epochs")
        if o.momentum != MOMENTUM:
            out.append(f"momentum {o.momentum:g} instead of {MOMENTUM:g}")
        if o.weight_decay != WEIGHT_DECAY:
            out.append(f"weight decay {o.weight_decay:g} instead of {WEIGHT_DECAY:g}")
        if s.epochs != EPOCHS:
            out.append(f"at most {s.epochs} epochs instead of {EPOCHS}")
        if s.lr_factor != LR_FACTOR:
            out.append(f"LR decay factor {s.lr_factor:g} instead of {LR_FACTOR:g}")
        if s.max_decays != LR_DECAYS:
            out.append(f"{s.max_decays} LR decays instead of {LR_DECAYS}")
        return out


SECTIONS = cli.sections(TrainConfig)
LEAVES = cli.leaves(TrainConfig)


# ---- dicts: checkpoints, recipes, MLflow -----------------------------------------------------------------------------


def _layer(data: Any, source: str) -> dict[str, Any]:
    """A flat layer of a config dict, a recipe or flags; S written as the two fields of older versions (``scale``
    None or an int, ``scale_jitter`` None or a pair) reads as the one field."""
    flat = cli.flatten(TrainConfig, data, source, LEGACY)
    jitter = flat.pop("scale_jitter", None)
    if jitter is not None:
        flat["scale"] = jitter
    elif "scale" in flat and flat["scale"] is None:  # the old "none = 256"
        del flat["scale"]
    return flat


def to_dict(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """The config as nested plain data (JSON/YAML-safe), as stored in checkpoints."""
    return cli.to_dict(config)


def from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A config from ``to_dict``'s output (of this or an older version) or a recipe mapping; missing fields take
    their defaults."""
    return cli.build(TrainConfig, _layer(data, "config dict"))


def derived(config: TrainConfig, gpu: bool = False) -> dict[str, Any]:
    """The quantities computed from the config (never configured), for logs and params; ``gpu``: workers on GPUs."""
    return {
        "train_scale": str(config.data.train_scale),
        "val_q": config.data.q,
        "per_worker_batch": config.per_worker_batch,
        "micro_batch": config.micro_batch,
        "accumulation_steps": config.accumulation_steps,
        "effective_lr": config.optim.effective_lr,
        "warmup_epochs": config.optim.warmup,
        "run_name": config.run_name,
        "deviations_from_paper": config.deviations_from_paper(gpu),
    }


def to_params(config: TrainConfig, gpu: bool = False) -> dict[str, str]:
    """Every leaf field (``section.field``) and every derived quantity (``derived.*``), as MLflow param strings."""
    extra = derived(config, gpu)
    extra["deviations_from_paper"] = "; ".join(extra["deviations_from_paper"]) or "none"
    return {**cli.to_params(config), **{f"derived.{k}": cli.param_text(v) for k, v in extra.items()}}


# ---- recipes ---------------------------------------------------------------------------------------------------------


def find_recipe(name: str) -> Path:
    """A recipe file: a path, or a name in trainer/recipes with or without its suffix (``a_256``)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (RECIPES / name, RECIPES / f"{name}.yaml", RECIPES / f"{name}.py"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in RECIPES.glob("*") if p.suffix in (".yaml", ".py") and p.stem[0] != "_"))
    raise ValueError(f"bad config {name!r}: expected a recipe file or one of {known}")


def load_recipe(name: str, smoke: bool = False) -> dict[str, Any]:
    """A recipe as a flat {field: value} layer: YAML, or Python with ``get_config(smoke: bool = False)``."""
    return _layer(cli.load_file(TrainConfig, find_recipe(name), LEGACY, smoke=smoke), name)


def smoke_preset(layer: Mapping[str, Any]) -> dict[str, Any]:
    """The --smoke overrides for a flat layer: tiny sizes; S keeps the paper's ratio to the crop (256/224), and a
    jittered S stays jittered ([256, 512]/224 of the crop)."""
    crop = layer.get("crop", SMOKE["crop"])
    jittered = "scale" in layer and TrainScale.of(layer["scale"]).jittered
    paper = TrainScale(*SCALE_JITTER) if jittered else TrainScale(SCALE, SCALE)
    return {**SMOKE, "scale": paper.at_crop(crop).plain()}


def compose(recipe: Mapping[str, Any] | None = None, explicit: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults < recipe < smoke preset (if smoke is on in either) < explicit overrides; each layer flat or nested."""
    recipe, explicit = _layer(recipe or {}, "recipe"), _layer(explicit or {}, "flags")
    smoke = bool({**recipe, **explicit}.get("smoke", False))
    # The preset's S follows the crop that will be used, so that --smoke --crop 64 needs no --scale.
    preset = smoke_preset({**recipe, **SMOKE, **{k: v for k, v in explicit.items() if k == "crop"}}) if smoke else {}
    return cli.build(TrainConfig, {**recipe, **preset, **explicit})


# ---- command line ----------------------------------------------------------------------------------------------------


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line: one flag per config field (``pipeline.cli``) and ``--config``."""
    parser = cli.build_parser(
        TrainConfig, prog, "Train a VGG net of Table 1 with the paper's recipe (Sec. 3.1). Defaults are the paper's; "
        "precedence: defaults < --config recipe < --smoke preset < flags given here.")
    parser.add_argument("--config", metavar="FILE", help="a YAML or Python recipe: a path, or a name in "
                        "trainer/recipes such as a_256; flags given here override it")
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> TrainConfig:
    """The config from command-line flags (and the recipe ``--config`` names); bad input exits with one line, code 2."""
    parser = build_parser(prog)
    flags = vars(parser.parse_args(argv))
    recipe_name = flags.pop("config", None)
    try:
        recipe = load_recipe(recipe_name, smoke=bool(flags.get("smoke", False))) if recipe_name else {}
        return compose(recipe, flags)
    except (ValueError, OSError, yaml.YAMLError) as e:
        parser.error(str(e))


def main(argv: Sequence[str] | None = None) -> None:
    """Print the resolved config, its derived quantities and its deviations from the paper."""
    config = parse_args(argv, prog="python -m trainer.config")
    print(yaml.safe_dump({**to_dict(config), "derived": derived(config)}, sort_keys=False), end="")


if __name__ == "__main__":
    main(sys.argv[1:])
