"""The sweep's one typed config; its command-line flags and MLflow params are generated from the fields.

Each field carries its help text (``option``); ``build_parser`` makes one flag per field, named after it. Tuple fields
take several values (``--scales 256 384 512``), except ``model``, which is repeated (``--model A --model B``) as the
issue's command line has it. Booleans get ``--x`` / ``--no-x``.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from evaluation.methods import METHODS
from pipeline.cli import OneLineParser, check_finite, check_http_url
from pipeline.cluster import ADDRESS_FORMS, is_address
from pipeline.decode import BACKENDS

REPEATED = {"model"}  # tuple fields given as a repeated flag rather than one flag with several values


def option(default: Any = MISSING, help: str = "", *, choices: Sequence[Any] | None = None,
           metavar: str | None = None) -> Any:
    """A dataclass field with its help text (and accepted values) attached, for flags and validation."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "metavar": metavar}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SweepConfig:
    """What to evaluate, on which images, how, and where the results go."""

    model: tuple[str, ...] = option(
        (), "a trained net: model or checkpoint directory (local or s3://), runs:/<MLflow run id> or a run id; "
        "repeat for several nets", metavar="CKPT_OR_RUN")
    data: str = option("", "the shard manifest (manifest.json or its directory, local or s3://)", metavar="MANIFEST")
    scales: tuple[int, ...] = option(
        (), "test scales Q (shorter image side); default per net from its training scale: S-32, S, S+32 for fixed S, "
        "Smin, (Smin+Smax)/2, Smax for jittered S (Sec. 4.2)", metavar="Q")
    methods: tuple[str, ...] = option(METHODS, "evaluation methods (Sec. 3.2)", choices=METHODS)
    split: str = option("val", "the manifest split to evaluate")
    out: str = option("sweep", "results directory (local or s3://): posteriors/, tables, plot", metavar="DIR")
    max_images: int | None = option(None, "evaluate only the split's first N images (smoke runs)", metavar="N")
    batch_size: int = option(32, "images per dense forward pass (equal shapes only)")
    max_crops: int = option(250, "crops per multi-crop forward pass")
    decoder: str = option("auto", "JPEG decoder: auto = DALI on GPUs, the CPU decoder on CPUs", choices=BACKENDS)
    gpus_per_task: float = option(1.0, "GPUs per (net, Q, shard) task when the cluster has GPUs")
    ray_address: str | None = option(
        None, "Ray to use: auto = the cluster running on this machine, local = a Ray of this sweep's own, host:port or "
        "ray://host:port = that cluster (default: RAY_ADDRESS, else a running cluster, else a local Ray)",
        metavar="ADDR")
    mlflow: bool = option(True, "log the sweep to MLflow (parent run, child run per net, Q and method)")
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI); also resolves "
                                      "runs:/ model sources", metavar="URI")
    experiment: str = option("verydeep-eval", "MLflow experiment")
    run_name: str | None = option(None, "MLflow name of the sweep's parent run", metavar="NAME")
    s3_endpoint: str | None = option(None, "S3-compatible endpoint URL (default: AWS_ENDPOINT_URL)", metavar="URL")

    def __post_init__(self) -> None:
        check_finite(self)
        check_http_url("s3_endpoint", self.s3_endpoint)
        if not self.model:
            raise ValueError("give at least one --model")
        if not self.data:
            raise ValueError("give the shard manifest with --data")
        if len(set(self.model)) != len(self.model):
            raise ValueError(f"a model is given twice: {', '.join(self.model)}")
        bad = [q for q in self.scales if q <= 0]
        if bad:
            raise ValueError(f"test scales must be positive integers, got {bad}")
        if not self.methods or any(m not in METHODS for m in self.methods):
            raise ValueError(f"methods must be among {', '.join(METHODS)}, got {', '.join(self.methods) or 'none'}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be positive, got {self.max_images}")
        if self.ray_address is not None and not is_address(self.ray_address):
            raise ValueError(f"bad --ray-address {self.ray_address!r}: expected {ADDRESS_FORMS}")
        if self.batch_size < 1 or self.max_crops < 1 or self.gpus_per_task <= 0:
            raise ValueError("batch_size, max_crops and gpus_per_task must be positive")
        # Canonical order: the same request gives the same runs and files whatever the flag order.
        object.__setattr__(self, "scales", tuple(sorted(set(self.scales))))
        object.__setattr__(self, "methods", tuple(m for m in METHODS if m in self.methods))

    def params(self) -> dict[str, str]:
        """Flat string params for MLflow."""
        return {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in asdict(self).items()}


def _kind(hint: Any) -> tuple[type, bool]:
    """(element type, is a tuple) of a field's annotation, Optional stripped."""
    if get_origin(hint) in (Union, types.UnionType):
        (hint,) = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is tuple:
        return get_args(hint)[0], True
    return hint, False


def flag(name: str) -> str:
    """The command-line flag of a field."""
    return "--" + name.replace("_", "-")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """One flag per config field (help = the field's help, with its default)."""
    parser = OneLineParser(
        prog=prog, argument_default=argparse.SUPPRESS,
        description="Evaluate trained VGG nets densely and with 150 crops at several test scales, fuse them, and "
        "report the paper's Tables 3-6 (Sec. 3.2, 4.1-4.4).")
    hints = get_type_hints(SweepConfig)
    for f in fields(SweepConfig):
        base, many = _kind(hints[f.name])
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = f"{f.metadata['help']} (default: {shown if shown not in ('', ()) else 'none'})".replace("%", "%%")
        if base is bool:
            parser.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, help=text)
            continue
        kwargs: dict[str, Any] = dict(dest=f.name, type=base, help=text,
                                      metavar=f.metadata["metavar"] or {int: "N", float: "X"}.get(base, "VALUE"))
        if f.metadata["choices"]:
            kwargs.update(choices=f.metadata["choices"], metavar=None)
        if many:
            kwargs.update(action="append") if f.name in REPEATED else kwargs.update(nargs="+")
        parser.add_argument(flag(f.name), **kwargs)
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> SweepConfig:
    """The config from command-line flags; a malformed flag exits through argparse, a bad value raises ValueError."""
    ns = vars(build_parser(prog).parse_args(argv))
    return SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()})
