"""The sweep's one typed config; its flags and MLflow params are made from the fields by ``pipeline.cli``.

Tuple fields take several values (``--scales 256 384 512``), except ``model``, which is repeated (``--model A --model
B``) as the issue's command line has it. Booleans get ``--x`` / ``--no-x``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evaluation.methods import FLIPS, METHODS
from pipeline.cli import Checked, check_http_url, option, parse
from pipeline.cluster import ADDRESS_FORMS, is_address
from pipeline.decode import BACKENDS

WHAT, RESULTS, RUNNING = "what to evaluate", "where the results go", "how it runs"  # --help's groups
DESCRIPTION = ("Evaluate trained VGG nets densely and with 150 crops at several test scales, fuse them, and report the "
               "paper's Tables 3-6 (Sec. 3.2, 4.1-4.4).")


@dataclass(frozen=True)
class SweepConfig(Checked):
    """What to evaluate, on which images, how, and where the results go."""

    model: tuple[str, ...] = option(
        (), "a trained net: model or checkpoint directory (local or s3://), runs:/<MLflow run id> or a run id; "
        "required, repeat for several nets", metavar="CKPT_OR_RUN", repeat=True, group=WHAT)
    data: str = option("", "the shard manifest (manifest.json or its directory, local or s3://); required",
                       metavar="MANIFEST", group=WHAT)
    scales: tuple[int, ...] = option(
        (), "test scales Q (shorter image side); default per net from its training scale: S-32, S, S+32 for fixed S, "
        "Smin, (Smin+Smax)/2, Smax for jittered S (Sec. 4.2)", metavar="Q", group=WHAT)
    methods: tuple[str, ...] = option(METHODS, f"evaluation methods (Sec. 3.2), one or more of: {', '.join(METHODS)}",
                                      choices=METHODS, metavar="METHOD", group=WHAT)
    flip: str = option(
        "auto", "horizontal flips at test time: auto = as each net was trained (its model card; the paper's nets: on), "
        "on = dense flip-averaged and multi-crop's 50 crops per scale (5x5 grid x 2 flips; Sec. 3.2), off = dense on "
        "the image alone and the grid's 25 crops", choices=FLIPS, group=WHAT)
    split: str = option("val", "the manifest split to evaluate", group=WHAT)
    out: str = option("sweep", "results directory (local or s3://): posteriors/, tables, plot", metavar="DIR",
                      group=RESULTS)
    max_images: int | None = option(None, "evaluate only the split's first N images (smoke runs); default all",
                                    metavar="N", group=WHAT)
    batch_size: int = option(32, "images per dense forward pass (equal shapes only)", group=RUNNING)
    max_crops: int = option(250, "crops per multi-crop forward pass", group=RUNNING)
    decoder: str = option("auto", "JPEG decoder: auto = DALI on GPUs, the CPU decoder on CPUs", choices=BACKENDS,
                          group=RUNNING)
    gpus_per_task: float = option(1.0, "GPUs per (net, Q, shard) task when the cluster has GPUs", group=RUNNING)
    ray_address: str | None = option(
        None, "Ray to use: auto = the cluster running on this machine, local = a Ray of this sweep's own, host:port or "
        "ray://host:port = that cluster (default: RAY_ADDRESS, else a running cluster, else a local Ray)",
        metavar="ADDR", group=RUNNING)
    mlflow: bool = option(True, "log the sweep to MLflow (parent run, child run per net, Q and method)",
                          group=RESULTS)
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
                                      "); also resolves runs:/ model sources", metavar="URI", group=RESULTS)
    experiment: str = option("verydeep-eval", "MLflow experiment", metavar="NAME", group=RESULTS)
    run_name: str | None = option(None, "MLflow name of the sweep's parent run (default: sweep <data id>)",
                                  metavar="NAME", group=RESULTS)
    s3_endpoint: str | None = option(None, "S3-compatible endpoint URL (default: AWS_ENDPOINT_URL)", metavar="URL",
                                     group=RUNNING)

    def check(self) -> None:
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
        if not self.methods:
            raise ValueError(f"methods must be among {', '.join(METHODS)}, got none")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be positive, got {self.max_images}")
        if self.ray_address is not None and not is_address(self.ray_address):
            raise ValueError(f"bad --ray-address {self.ray_address!r}: expected {ADDRESS_FORMS}")
        if self.batch_size < 1 or self.max_crops < 1 or self.gpus_per_task <= 0:
            raise ValueError("batch_size, max_crops and gpus_per_task must be positive")
        # Canonical order: the same request gives the same runs and files whatever the flag order.
        object.__setattr__(self, "scales", tuple(sorted(set(self.scales))))
        object.__setattr__(self, "methods", tuple(m for m in METHODS if m in self.methods))


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> SweepConfig:
    """The config from command-line flags; bad input exits with one ``error:`` line and code 2."""
    return parse(SweepConfig, argv, prog, DESCRIPTION)
