"""The evaluation sweep: nets x test scales Q x methods on a split, in parallel on Ray, reported as Tables 3-6.

    python -m evaluation.sweep --model CKPT_OR_RUN [--model ...] --data MANIFEST [--scales Q ...]
                               [--methods dense multicrop] [--split val] [--out DIR]

1. Plan: load the manifest and every net (card + weights), choose each net's Q (the paper's, from its training scale,
   unless ``--scales``), check the input (Q >= crop, nets of one class list matching the data, a non-empty split).
2. Compute what the posterior store lacks: one Ray task per (net, Q, image shard), on a GPU when the cluster has
   them. A task decodes each image once at Q and runs every requested method on it; the driver stores each finished
   task's posteriors at once (``evaluation.posteriors``), so a rerun with one more net or Q computes only that.
3. Report from the stored posteriors (``evaluation.report``): tables as markdown and CSV, the error-vs-Q plot, printed
   and written under ``<out>/report``; then MLflow (``evaluation.tracking``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from evaluation.config import SweepConfig, parse_args
from evaluation.methods import METHODS, uses_flip, views_of
from evaluation.models import LoadedModel, ModelError, default_scales, label_models, load
from evaluation.posteriors import PosteriorStore, data_id, shard_limits
from evaluation.report import Report, ReportError, build_report
from evaluation.shard import ShardResult, evaluate_shard
from evaluation.tracking import MLFLOW_DEFAULT_URI, SweepData, SweepRun
from pipeline import cluster, storage
from pipeline.cli import to_params
from pipeline.manifest import Manifest, ManifestError, load_manifest
from pipeline.units import UnitError, run_units
from pipeline.verify import ShardError, error_line, inspect_shards

REPORT_DIR = "report"


class SweepError(ValueError):
    """Input the sweep cannot evaluate; the message is one line."""


@dataclass(frozen=True)
class Unit:
    """One task: a net, a test scale, an image shard, the views that shard still lacks, and whether the net is
    evaluated with flips."""

    model: LoadedModel
    q: int
    shard: int
    views: tuple[str, ...]
    flip: bool


@dataclass
class Plan:
    """What the sweep covers: nets, their test scales, the split's shards and how many rows of each."""

    manifest: Manifest
    models: list[LoadedModel]
    scales: dict[str, tuple[int, ...]]  # model id -> Q, ascending
    shard_uris: list[str]
    limits: list[int]  # rows taken from each shard
    data: str  # data id of the posterior store
    flips: dict[str, bool]  # model id -> evaluated with horizontal flips (as trained, unless --flip on/off)

    @property
    def shards(self) -> list[int]:
        """Indices of the shards that contribute images."""
        return [i for i, n in enumerate(self.limits) if n > 0]


@dataclass
class SweepResult:
    """What a sweep did and produced."""

    report: Report
    computed: list[tuple[str, int, int]]  # (model id, Q, shard) units run this time
    report_uri: str
    run_id: str | None = None
    files: list[str] = field(default_factory=list)
    ui: str | None = None  # how to open the parent run in MLflow's UI


def check_models(models: Sequence[LoadedModel], manifest: Manifest) -> None:
    """Nets fused or scored together must share one class list, and it must be the data's (labels index it)."""
    ids = [m.model_id for m in models]
    for i, m in enumerate(models):
        if m.model_id in ids[:i]:
            raise SweepError(f"models {models[ids.index(m.model_id)].source} and {m.source} are the same net")
    first = models[0]
    for m in models[1:]:
        if (m.card.num_classes, m.card.classes) != (first.card.num_classes, first.card.classes):
            raise SweepError(f"models {first.source} and {m.source} have different class lists "
                             f"({first.card.num_classes} and {m.card.num_classes} classes): their posteriors cannot "
                             "be fused")
    if first.card.num_classes != manifest.num_classes:
        raise SweepError(f"model {first.source} has {first.card.num_classes} classes, the data "
                         f"{manifest.num_classes}: its scores cannot be checked against these labels")
    if first.card.classes and list(first.card.classes) != manifest.wnids:
        i = next(i for i, (a, b) in enumerate(zip(first.card.classes, manifest.wnids)) if a != b)
        raise SweepError(f"model {first.source} orders its classes differently from the data (label {i} is "
                         f"{first.card.classes[i]} there, {manifest.wnids[i]} in the data)")


def choose_scales(cfg: SweepConfig, models: Sequence[LoadedModel]) -> dict[str, tuple[int, ...]]:
    """Each net's test scales: ``--scales`` for all, else the paper's from its training scale; all at least the crop."""
    out = {}
    for m in models:
        qs = cfg.scales or default_scales(m.card)
        small = [q for q in qs if q < m.card.crop]
        if small:
            raise SweepError(f"test scale Q={small[0]} is smaller than the crop {m.card.crop} of model {m.source}: "
                             "no crop fits in the rescaled image")
        if not qs:
            raise SweepError(f"model {m.source} (S={m.scale}, crop {m.card.crop}) has no paper test scale >= its "
                             "crop: give --scales")
        out[m.model_id] = tuple(qs)
    return out


def make_plan(cfg: SweepConfig) -> Plan:
    """Load and check everything before any compute starts: each bad input is one line."""
    manifest = load_manifest(cfg.data, cfg.s3_endpoint)
    split = manifest.split(cfg.split)
    if split.count == 0:
        raise SweepError(f"split {cfg.split!r} of {cfg.data} has no images")
    models = label_models([load(src, cfg.tracking_uri, cfg.s3_endpoint) for src in cfg.model])
    check_models(models, manifest)
    limits = shard_limits([s.rows for s in split.shards], cfg.max_images)
    observed = inspect_shards(manifest, [cfg.split], cfg.s3_endpoint)  # every footer readable, before any compute
    return Plan(manifest, models, choose_scales(cfg, models), manifest.shard_uris(cfg.split), limits,
                data_id(manifest, cfg.split, cfg.max_images, observed),
                {m.model_id: uses_flip(cfg.flip, m.card.flip) for m in models})


def pending_units(plan: Plan, store: PosteriorStore, methods: Sequence[str]) -> list[Unit]:
    """Every (net, Q, shard) that lacks a stored view, with the views it lacks."""
    units = []
    for m in plan.models:
        flip = plan.flips[m.model_id]
        for q in plan.scales[m.model_id]:
            for shard, lack in store.missing(m.model_id, q, views_of(methods, flip), plan.shards).items():
                units.append(Unit(m, q, shard, lack, flip))
    return units


def methods_for(views: Sequence[str], flip: bool) -> tuple[str, ...]:
    """The methods that produce the given views (dense's two views come together)."""
    return tuple(m for m in METHODS if any(v in views for v in views_of([m], flip)))


class Progress:
    """Progress over the images to evaluate: a tqdm bar (rate, time left) on a terminal; elsewhere (a log file, a Ray
    job's logs) a plain line at most every ``every`` seconds and for the last unit, since a bar's carriage returns
    would fill a log with one line per redraw."""

    def __init__(self, units: int, images: int, every: float = 10.0, stream: TextIO | None = None) -> None:
        self.units, self.images, self.every = units, images, every
        self.stream = stream or sys.stderr
        self.done_units = self.done_images = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=images, desc="sweep", unit="img", file=self.stream, dynamic_ncols=True,
                            postfix=f"0/{units} units")

    def update(self, images: int, what: str) -> None:
        """Count a finished unit (``what`` names it)."""
        self.done_units += 1
        self.done_images += images
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.done_units}/{self.units} units, last {what}", refresh=False)
            self.bar.update(images)
            return
        now = time.monotonic()
        if now - self.last < self.every and self.done_units < self.units:
            return
        self.last = now
        rate = self.done_images / max(now - self.start, 1e-9)
        left = (self.images - self.done_images) / rate if rate > 0 else float("nan")
        print(f"sweep: {self.done_units}/{self.units} units, {self.done_images}/{self.images} images "
              f"({rate:.1f} img/s), ~{left:.0f}s left; last: {what}", file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar (plain lines need no end)."""
        if self.bar is not None:
            self.bar.close()


def start_tasks(ray_address: str | None, gpus_per_task: float,
                models: Sequence[LoadedModel]) -> tuple[float, dict]:
    """Join (or start) Ray for per-net tasks: the GPUs each task asks for (none on a cluster without GPUs) and each
    net's weights put in the object store once, shared by all its tasks."""
    import ray

    cluster.connect(ray_address)
    gpus = gpus_per_task if ray.cluster_resources().get("GPU", 0) > 0 else 0
    return gpus, {m.model_id: ray.put(m.state) for m in models}


def unit_failure(e: UnitError, error: type[Exception], unit: str) -> Exception:
    """The one-line error of a failed unit: a damaged shard's own line (it names the shard and what to do), else
    ``error`` naming the unit and its cause."""
    damaged = error_line(e)
    if damaged is not None:
        return ShardError(damaged)
    cause = e.cause
    return error(f"{unit} failed: {type(cause).__name__}: {' '.join(str(cause).split())[:300]}")


def compute(cfg: SweepConfig, plan: Plan, store: PosteriorStore, units: Sequence[Unit]) -> None:
    """Run the units as Ray tasks and store each one's posteriors as it finishes."""
    if not units:
        return
    gpus, states = start_tasks(cfg.ray_address, cfg.gpus_per_task, plan.models)

    def task_args(u: Unit) -> tuple:
        return (u.model.card.to_dict(), states[u.model.model_id], plan.shard_uris[u.shard], plan.limits[u.shard], u.q,
                methods_for(u.views, u.flip), cfg.decoder, cfg.batch_size, cfg.max_crops, cfg.s3_endpoint, u.flip)

    print(f"sweep: {len(units)} units ({len(plan.models)} nets, {gpus and 'GPU' or 'CPU'} tasks) on Ray",
          file=sys.stderr, flush=True)
    progress = Progress(len(units), sum(plan.limits[u.shard] for u in units))
    try:
        result: ShardResult
        # closing: a failed store write cancels the units still in flight at once
        with closing(run_units(evaluate_shard, units, task_args, num_cpus=1, num_gpus=gpus, max_retries=2)) as done:
            for u, result in done:
                for view in u.views:
                    store.write(u.model.model_id, u.q, view, u.shard, result.keys, result.labels, result.probs[view])
                progress.update(len(result.keys), f"{u.model.label} Q={u.q} shard {u.shard} ({result.seconds:.1f}s)")
    except UnitError as e:
        u = e.unit
        raise unit_failure(e, SweepError, f"{u.model.label} Q={u.q} shard {plan.shard_uris[u.shard]}") from None
    finally:
        progress.close()


def write_report(report: Report, out: str, endpoint: str | None, local: Path) -> tuple[str, list[str]]:
    """Write the report under ``<out>/report`` (through ``local`` when ``out`` is remote); its URI and files."""
    files = report.write(local)
    uri = storage.join(out, REPORT_DIR)
    if storage.is_s3(out):
        for f in files:
            storage.write_bytes_atomic(storage.join(uri, f.name), f.read_bytes(), endpoint)
    return uri, [storage.join(uri, f.name) for f in files]


def check_outputs(cfg: SweepConfig) -> None:
    """Inside a Ray job, a relative ``--out`` or local tracking store would vanish with the job's working directory."""
    cluster.check_job_output("--out", cfg.out, "an absolute path on shared storage or s3://bucket/prefix")
    if cfg.mlflow:
        tracking = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or MLFLOW_DEFAULT_URI
        cluster.check_job_output("--tracking-uri", tracking, "an http(s):// MLflow server, or --no-mlflow")


def describe(cfg: SweepConfig, plan: Plan, report: Report | None = None) -> str:
    """The parent run's description (markdown): what the sweep evaluates and how; then Tables 3-6, once done."""
    images = sum(plan.limits)
    lines = [f"Evaluation sweep of {len(plan.models)} net{'s' * (len(plan.models) > 1)} on {images} images of "
             f"`{cfg.split}` (`{cfg.data}`, data id `{plan.data}`)" + (", running." if report is None else "."), "",
             "| net | source | trained with flips | evaluated with flips | test Q |", "|---|---|---|---|---|"]
    for m in plan.models:
        flip = plan.flips[m.model_id]
        how = "yes (dense flip-averaged, 50 crops/scale)" if flip else "no (dense alone, 25 crops/scale)"
        lines.append(f"| {m.label} | `{m.source}` | {'yes' if m.card.flip else 'no'} | {how} | "
                     f"{','.join(map(str, plan.scales[m.model_id]))} |")
    if report is not None:
        lines += ["", report.markdown()]
    return "\n".join(lines) + "\n"


def sweep_data(cfg: SweepConfig, plan: Plan) -> SweepData:
    """The split as the sweep reads it, for MLflow's dataset input."""
    shards = tuple((plan.shard_uris[i], plan.limits[i]) for i in plan.shards)
    return SweepData(manifest_uri(cfg.data), cfg.split, plan.data, sum(plan.limits), shards,
                     plan.manifest.num_classes)


def manifest_uri(data: str) -> str:
    """The manifest file a ``--data`` names (it may name its directory), absolute when local."""
    uri = data if data.endswith(".json") else storage.join(data, "manifest.json")
    return uri if storage.is_s3(uri) else str(Path(uri).resolve())


def run(cfg: SweepConfig) -> SweepResult:
    """Plan, compute what is missing, report, log: the whole sweep; the MLflow parent run spans it."""
    check_outputs(cfg)
    plan = make_plan(cfg)
    tracked = SweepRun(cfg.tracking_uri, cfg.experiment, cfg.run_name or f"sweep {plan.data}", plan.data,
                       storage.join(cfg.out, REPORT_DIR)) if cfg.mlflow else None
    if tracked:
        tracked.start(to_params(cfg), sweep_data(cfg, plan), describe(cfg, plan))
    try:
        result = evaluate(cfg, plan, tracked)
    except BaseException as e:
        if tracked:
            interrupted = isinstance(e, KeyboardInterrupt)
            tracked.end("KILLED" if interrupted else "FAILED",
                        "interrupted" if interrupted else f"{type(e).__name__}: {' '.join(str(e).split())[:500]}")
        raise
    return result


def evaluate(cfg: SweepConfig, plan: Plan, tracked: SweepRun | None) -> SweepResult:
    """Compute what the store lacks, report, and log the results into the open parent run."""
    store = PosteriorStore(cfg.out, plan.data, cfg.s3_endpoint)
    units = pending_units(plan, store, cfg.methods)
    total = sum(len(plan.scales[m.model_id]) for m in plan.models) * len(plan.shards)
    print(f"sweep: {len(plan.models)} nets, {sum(plan.limits)} images of {cfg.split!r}, {total} (net, Q, shard) "
          f"units, {len(units)} to compute ({total - len(units)} stored)", file=sys.stderr, flush=True)
    compute(cfg, plan, store, units)

    report = build_report(plan.models, plan.scales, cfg.methods, store.loader(plan.shards), plan.flips)
    local_root = None if storage.is_s3(cfg.out) else Path(storage.join(cfg.out, REPORT_DIR))
    with tempfile.TemporaryDirectory(prefix="verydeep-report-") as tmp:
        local = local_root or Path(tmp)
        uri, files = write_report(report, cfg.out, cfg.s3_endpoint, local)
        run_id = tracked.finish(report, local, describe(cfg, plan, report)) if tracked else None
    computed = [(u.model.model_id, u.q, u.shard) for u in units]
    return SweepResult(report, computed, uri, run_id, files, tracked.ui_hint() if tracked else None)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run the sweep and print the tables; bad input prints one ``error:`` line and returns 2 (bad
    flags exit with code 2 before anything starts)."""
    cfg = parse_args(argv, prog="python -m evaluation.sweep")
    # MLflow's own settings: the sweep prints where its run is at the end, with the command that opens it, not
    # MLflow's links per run; and MLflow's INFO lines (creating a store's tables) are not the sweep's news.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        result = run(cfg)
    except (SweepError, ModelError, ManifestError, ReportError, storage.StorageError, cluster.ClusterError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(result.report.markdown())
    print(f"report: {result.report_uri}" + (f"  (MLflow run {result.run_id})" if result.run_id else ""))
    if result.ui:
        print(result.ui)
    return 0


if __name__ == "__main__":
    sys.exit(main())
