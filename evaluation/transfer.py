"""Very deep features on other datasets (the paper's Appendix B, Table 11): fixed nets, dense FC7, linear SVMs.

    python -m evaluation.transfer --model CKPT_OR_RUN [--model ...] --data TARGET_MANIFEST [--protocol auto]
                                  [--scales Q ...] [--pool average|stack] [--out DIR]

``--data`` is a target prepared by ``python -m pipeline.prepare --layout voc2007|caltech101|caltech256|folders``.

1. Plan: the manifest's target record (layout, splits), every net (card + weights; ``evaluation.models``, the
   sweep's model sources), the protocol's Q and pooling unless given: VOC-2007 averages Q in {256, 384, 512, 640,
   768}, Caltech stacks Q in {256, 384, 512} (Appendix B; ``vgg.paper``).
2. Descriptors: one Ray task per (net, Q, image shard), on a GPU when the cluster has them, with the sweep's
   decoders (``evaluation.features``); each finished task's descriptors are stored at once, so a rerun, another
   pooling rule or another SVM fit computes none again.
3. Classifiers (``evaluation.svm``) for each net alone and, with several nets, for their fusion (descriptors
   stacked), on every split of the target (VOC: its one train/val/test split; Caltech: 3 random splits): C chosen on
   the held-out images, refitted, scored on test: per-class AP (VOC, 'difficult' left out) or recall (Caltech).
4. Report: Table 11's layout (mean over splits, ± their standard deviation where there are several; the paper's
   value beside nets D, E and their fusion), the splits and the per-class values as markdown and CSV under
   ``<out>/report``; MLflow: a parent run (config, summary, tables) with a child run per (net or fusion, split).
"""

from __future__ import annotations

import hashlib
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation.features import VIEW, FeatureResult, FeatureStore, describe_shard
from evaluation.metrics import AP_METHODS
from evaluation.models import LoadedModel, ModelError, label_models, load
from evaluation.posteriors import data_id
from evaluation.report import Table
from evaluation.svm import C_GRID, POOLS, Fit, FitError, fit_multiclass, fit_multilabel, fuse, pool_scales
from evaluation.sweep import check_outputs, start_tasks, unit_failure, write_report
from evaluation.tracking import log_or_warn
from pipeline import cluster, storage
from pipeline.cli import Checked, check_http_url, option, parse, to_params
from pipeline.cluster import ADDRESS_FORMS, is_address
from pipeline.decode import BACKENDS
from pipeline.imagenet import PrepareError
from pipeline.manifest import Manifest, ManifestError, load_manifest
from pipeline.targets import Labels, read_labels, split_rows, target_of
from pipeline.units import UnitError, run_units
from pipeline.verify import inspect_shards
from vgg.paper import CALTECH_SCALES, TABLE11, VOC_SCALES

TRANSFER_TAG = "verydeep.transfer"  # on every run of one job: the data id


@dataclass(frozen=True)
class Protocol:
    """A Table 11 column: its name, metric, and Appendix B's test scales and pooling over them."""

    name: str
    metric: str
    scales: tuple[int, ...]
    pool: str
    multilabel: bool


PROTOCOLS = {
    "voc2007": Protocol("VOC-2007", "mAP", VOC_SCALES, "average", True),
    "caltech101": Protocol("Caltech-101", "mean class recall", CALTECH_SCALES, "stack", False),
    "caltech256": Protocol("Caltech-256", "mean class recall", CALTECH_SCALES, "stack", False),
    "folders": Protocol("folders", "mean class recall", CALTECH_SCALES, "stack", False),
}


class TransferError(ValueError):
    """Input the job cannot use; the message is one line."""


@dataclass(frozen=True)
class TransferConfig(Checked):
    """Which fixed nets, on which target, how the descriptors are pooled and classified, where the results go."""

    model: tuple[str, ...] = option(
        (), "a trained net: model or checkpoint directory (local or s3://), runs:/<MLflow run id> or a run id; "
        "repeat for several nets (their fusion is reported too)", metavar="CKPT_OR_RUN", repeat=True)
    data: str = option("", "the target's manifest (pipeline.prepare --layout ...), local or s3://", metavar="MANIFEST")
    protocol: str = option("auto", "evaluation protocol; auto = the target's layout", choices=("auto", *PROTOCOLS))
    scales: tuple[int, ...] = option((), "test scales Q; default the protocol's (VOC 256-768, Caltech 256-512)",
                                     metavar="Q")
    pool: str = option("auto", "pooling over Q: average (VOC) or stack (Caltech); auto = the protocol's",
                       choices=("auto", *POOLS))
    splits: int | None = option(None, "use the target's first N splits (default: all it records)", metavar="N")
    c_grid: tuple[float, ...] = option(C_GRID, "SVM C values; the one best on the held-out images is used",
                                       metavar="C")
    ap: str = option("11point", "VOC AP: 11point (VOC-2007) or area (VOC 2010+)", choices=AP_METHODS)
    out: str = option("transfer", "results directory (local or s3://): features/, report/", metavar="DIR")
    batch_size: int = option(32, "images per dense forward pass (equal shapes only)")
    decoder: str = option("auto", "JPEG decoder: auto = DALI on GPUs, the CPU decoder on CPUs", choices=BACKENDS)
    gpus_per_task: float = option(1.0, "GPUs per (net, Q, shard) task when the cluster has GPUs")
    ray_address: str | None = option(None, f"Ray to use: {ADDRESS_FORMS} (default: RAY_ADDRESS, else a running "
                                     "cluster, else a local Ray)", metavar="ADDR")
    mlflow: bool = option(True, "log to MLflow (parent run, child run per net or fusion and split)")
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI); also resolves "
                                      "runs:/ model sources", metavar="URI")
    experiment: str = option("verydeep-transfer", "MLflow experiment")
    run_name: str | None = option(None, "MLflow name of the parent run", metavar="NAME")
    s3_endpoint: str | None = option(None, "S3-compatible endpoint URL (default: AWS_ENDPOINT_URL)", metavar="URL")

    def check(self) -> None:
        check_http_url("s3_endpoint", self.s3_endpoint)
        if not self.model or not self.data:
            raise ValueError("give at least one --model and the target with --data")
        if len(set(self.model)) != len(self.model):
            raise ValueError(f"a model is given twice: {', '.join(self.model)}")
        if any(q <= 0 for q in self.scales) or any(c <= 0 for c in self.c_grid) or not self.c_grid:
            raise ValueError("test scales and C values must be positive")
        if (self.splits is not None and self.splits < 1) or self.batch_size < 1 or self.gpus_per_task <= 0:
            raise ValueError("splits, batch_size and gpus_per_task must be positive")
        if self.ray_address is not None and not is_address(self.ray_address):
            raise ValueError(f"bad --ray-address {self.ray_address!r}: expected {ADDRESS_FORMS}")
        object.__setattr__(self, "scales", tuple(sorted(set(self.scales))))
        object.__setattr__(self, "c_grid", tuple(sorted(set(self.c_grid))))


@dataclass
class Plan:
    """What the job covers: the target, its protocol, the nets, Q, pooling, and where each split's descriptors go."""

    manifest: Manifest
    target: dict
    protocol: Protocol
    protocol_key: str  # its name among PROTOCOLS (and the paper's Table 11 columns)
    models: list[LoadedModel]
    scales: tuple[int, ...]
    pool: str
    splits: int
    stores: dict[str, FeatureStore]  # manifest split -> its store
    data: str  # one id for the whole target (the tag of its runs)


@dataclass(frozen=True)
class Unit:
    """One task: a net, a test scale, one shard of one manifest split."""

    model: LoadedModel
    q: int
    split: str
    shard: int


@dataclass
class Row:
    """A Table 11 row: one net or a fusion, with its fit on every split."""

    label: str
    sources: tuple[str, ...]
    fits: list[Fit] = field(default_factory=list)

    @property
    def values(self) -> np.ndarray:
        """The test metric of each split."""
        return np.array([f.metric for f in self.fits])


@dataclass
class TransferReport:
    """The tables of one job; ``write`` puts them as markdown and CSV in a directory."""

    tables: list[Table]

    def write(self, directory: Path) -> list[Path]:
        """Write every table as <name>.md and <name>.csv; returns the files."""
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for t in self.tables:
            for suffix, text in ((".md", t.markdown()), (".csv", t.csv())):
                files.append(directory / f"{t.name}{suffix}")
                files[-1].write_text(text)
        return files

    def markdown(self) -> str:
        """Every table, one after another."""
        return "\n".join(t.markdown() for t in self.tables)


@dataclass
class TransferResult:
    """What a job did and produced."""

    report: TransferReport
    rows: list[Row]
    computed: list[tuple[str, int, str, int]]  # (model id, Q, split, shard) run this time
    report_uri: str
    run_id: str | None = None


def make_plan(cfg: TransferConfig) -> Plan:
    """Load and check everything before any compute: each bad input is one line."""
    manifest = load_manifest(cfg.data, cfg.s3_endpoint)
    target = target_of(manifest)
    name = target.get("layout") if cfg.protocol == "auto" else cfg.protocol
    if name not in PROTOCOLS:
        raise TransferError(f"target layout {name!r} has no protocol: pass --protocol ({', '.join(PROTOCOLS)})")
    protocol = PROTOCOLS[name]
    if protocol.multilabel != bool(target.get("multilabel")):
        kind = "multi-label" if target.get("multilabel") else "single-label"
        raise TransferError(f"protocol {name} does not fit a {kind} target ({target.get('layout')})")
    splits = cfg.splits or len(target["splits"])
    if splits > len(target["splits"]):
        raise TransferError(f"--splits {splits}: the target records {len(target['splits'])}")
    models = label_models([load(src, cfg.tracking_uri, cfg.s3_endpoint) for src in cfg.model])
    for i, m in enumerate(models):
        if m.model_id in [o.model_id for o in models[:i]]:
            raise TransferError(f"models {models[i - 1].source} and {m.source} are the same net")
    scales = cfg.scales or protocol.scales
    for m in models:
        small = [q for q in scales if q < m.card.crop]
        if small:
            raise TransferError(f"test scale Q={small[0]} is smaller than the crop {m.card.crop} of model {m.source}")
    observed = inspect_shards(manifest, list(manifest.splits), cfg.s3_endpoint)  # every footer, before any compute
    stores, at = {}, 0
    for split in manifest.splits:
        facts = observed[at : at + len(manifest.splits[split].shards)]
        at += len(facts)
        stores[split] = FeatureStore(cfg.out, data_id(manifest, split, None, facts), cfg.s3_endpoint)
    ids = "".join(s.root.rsplit("/", 1)[-1] for s in stores.values())
    data = "target-" + hashlib.sha256(ids.encode()).hexdigest()[:12]
    pool = protocol.pool if cfg.pool == "auto" else cfg.pool
    return Plan(manifest, target, protocol, name, models, tuple(scales), pool, splits, stores, data)


def pending_units(plan: Plan) -> list[Unit]:
    """Every (net, Q, split, shard) whose descriptors are not stored yet."""
    units = []
    for m in plan.models:
        for q in plan.scales:
            for split, store in plan.stores.items():
                shards = range(len(plan.manifest.splits[split].shards))
                units += [Unit(m, q, split, s) for s in store.missing(m.model_id, q, (VIEW,), shards)]
    return units


def compute(cfg: TransferConfig, plan: Plan, units: Sequence[Unit]) -> None:
    """Run the units as Ray tasks; store each one's descriptors as it finishes."""
    if not units:
        return
    gpus, states = start_tasks(cfg.ray_address, cfg.gpus_per_task, plan.models)

    def task_args(u: Unit) -> tuple:
        return (u.model.card.to_dict(), states[u.model.model_id], plan.manifest.shard_uris(u.split)[u.shard], u.q,
                cfg.decoder, cfg.batch_size, cfg.s3_endpoint)

    print(f"transfer: {len(units)} (net, Q, shard) tasks on Ray ({'GPU' if gpus else 'CPU'})", file=sys.stderr,
          flush=True)
    start = time.monotonic()
    try:
        result: FeatureResult
        # closing: a failed store write cancels the units still in flight at once
        with closing(run_units(describe_shard, units, task_args, num_cpus=1, num_gpus=gpus, max_retries=2)) as done:
            for n, (u, result) in enumerate(done, start=1):
                plan.stores[u.split].write(u.model.model_id, u.q, VIEW, u.shard, result.keys, result.labels,
                                           result.features)
                print(f"transfer: {n}/{len(units)} tasks, {time.monotonic() - start:.0f}s; last: {u.model.label} "
                      f"Q={u.q} {u.split} shard {u.shard} ({len(result.keys)} images, {result.seconds:.1f}s)",
                      file=sys.stderr, flush=True)
    except UnitError as e:
        u = e.unit
        raise unit_failure(e, TransferError, f"{u.model.label} Q={u.q} {u.split} shard {u.shard}") from None


def descriptors(plan: Plan, model: LoadedModel, labels: Labels) -> np.ndarray:
    """One net's descriptors of every stored image (rows in ``labels``' key order), pooled over Q, L2-normalised."""
    per_q = []
    for q in plan.scales:
        parts = [store.read(model.model_id, q, VIEW, range(len(plan.manifest.splits[split].shards)))
                 for split, store in plan.stores.items()]
        keys = np.concatenate([p.keys for p in parts])
        order = np.argsort(keys, kind="stable")
        if not np.array_equal(keys[order], labels.keys):
            raise TransferError(f"stored descriptors of {model.label} at Q={q} are not of the target's images")
        per_q.append(np.concatenate([p.probs for p in parts])[order])
    return pool_scales(per_q, plan.pool)


def classify(plan: Plan, x: np.ndarray, labels: Labels, cs: Sequence[float], ap: str) -> list[Fit]:
    """Fit and test on each of the plan's splits."""
    fits = []
    for i in range(plan.splits):
        rows = split_rows(plan.target, labels, i)
        if plan.protocol.multilabel:
            fits.append(fit_multilabel(x, labels.targets, rows, cs, ap))
        else:
            fits.append(fit_multiclass(x, labels.labels, rows, plan.manifest.num_classes, cs))
    return fits


def summary(values: np.ndarray) -> str:
    """A Table 11 cell in %: the mean, and ± the standard deviation over the splits where there are several."""
    mean = 100 * float(np.mean(values))
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * float(np.std(values)):.1f}"


def paper_value(plan: Plan, row: Row) -> str:
    """The paper's Table 11 cell for a row of nets D, E or their fusion on this protocol's dataset, else "-"."""
    archs = [m.card.arch for m in plan.models if m.source in row.sources]
    mean, std = TABLE11.get(" & ".join(sorted(archs)), {}).get(plan.protocol_key, (None, None))
    return "-" if mean is None else f"{mean}" + ("" if std is None else f" ± {std}")


def build_tables(plan: Plan, rows: Sequence[Row]) -> list[Table]:
    """Table 11's layout (with the paper's value where it has one), the per-split fits and the per-class values
    (means over splits, %)."""
    p = plan.protocol
    table11 = Table("table11", f"Table 11 layout: {p.name} ({p.metric}, %)", ["Method", p.name, "paper"],
                    [[r.label, summary(r.values), paper_value(plan, r)] for r in rows])
    splits = Table("transfer_splits", "Every split: C chosen on the held-out images, test metric (%)",
                   ["Method", "split", "C", p.metric],
                   [[r.label, i + 1, f.c, 100 * f.metric] for r in rows for i, f in enumerate(r.fits)])
    per_class = Table("transfer_per_class", f"Per class ({'AP' if p.multilabel else 'recall'}, %, mean over splits)",
                      ["class", *[r.label for r in rows]])
    for k, name in enumerate(plan.manifest.wnids):
        per_class.rows.append([name, *[100 * float(np.nanmean([f.per_class[k] for f in r.fits])) for r in rows]])
    return [table11, splits, per_class]


def _metric_name(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", text)


def _log(plan: Plan, rows: Sequence[Row], report: TransferReport, params: dict[str, str], report_dir: Path,
         cfg: TransferConfig) -> str:
    import mlflow

    if cfg.tracking_uri:
        mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_experiment(cfg.experiment)
    tags = {TRANSFER_TAG: plan.data}
    key = "ap" if plan.protocol.multilabel else "recall"
    metric = "map" if plan.protocol.multilabel else "mean_class_recall"
    with mlflow.start_run(run_name=cfg.run_name or f"transfer {plan.protocol.name}", tags=tags) as parent:
        mlflow.log_params({**params, "protocol_name": plan.protocol.name, "scales_used": ",".join(map(str, plan.scales)),
                           "pool_used": plan.pool})
        for r in rows:
            mlflow.log_metrics({_metric_name(f"{r.label} {metric}"): float(np.mean(r.values)),
                                _metric_name(f"{r.label} {metric} std"): float(np.std(r.values))})
            for i, f in enumerate(r.fits):
                with mlflow.start_run(run_name=f"{r.label} split {i + 1}", nested=True, tags=tags):
                    mlflow.log_params({"method": r.label, "models": ",".join(r.sources), "split": i + 1, "c": f.c,
                                       "pool": plan.pool, "scales": ",".join(map(str, plan.scales))})
                    mlflow.log_metrics({metric: f.metric, **{_metric_name(f"{key} {n}"): float(v) for n, v in
                                                             zip(plan.manifest.wnids, f.per_class) if np.isfinite(v)},
                                        **{f"val C {c:g}": v for c, v in f.val.items()}})
        for t in report.tables:
            mlflow.log_table(t.columns_dict(), artifact_file=f"tables/{t.name}.json")
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
        return parent.info.run_id


def run(cfg: TransferConfig) -> TransferResult:
    """Plan, compute the missing descriptors, fit, report, log: the whole job."""
    check_outputs(cfg)
    plan = make_plan(cfg)
    units = pending_units(plan)
    total = len(plan.models) * len(plan.scales) * sum(len(s.shards) for s in plan.manifest.splits.values())
    print(f"transfer: {plan.protocol.name}, {len(plan.models)} nets, Q {plan.scales} ({plan.pool}), {plan.splits} "
          f"splits; {total} (net, Q, shard) units, {len(units)} to compute ({total - len(units)} stored)",
          file=sys.stderr, flush=True)
    compute(cfg, plan, units)
    labels = read_labels(plan.manifest, cfg.s3_endpoint)
    per_net = [descriptors(plan, m, labels) for m in plan.models]
    rows = [Row(m.label, (m.source,)) for m in plan.models]
    if len(plan.models) > 1:
        rows.append(Row(" & ".join(m.label for m in plan.models), tuple(m.source for m in plan.models)))
    for row, x in zip(rows, [*per_net, fuse(per_net)] if len(per_net) > 1 else per_net):
        row.fits = classify(plan, x, labels, cfg.c_grid, cfg.ap)
    report = TransferReport(build_tables(plan, rows))
    local_root = None if storage.is_s3(cfg.out) else Path(storage.join(cfg.out, "report"))
    with tempfile.TemporaryDirectory(prefix="verydeep-transfer-") as tmp:
        local = local_root or Path(tmp)
        uri, _ = write_report(report, cfg.out, cfg.s3_endpoint, local)  # type: ignore[arg-type]
        run_id = None
        if cfg.mlflow:
            run_id = log_or_warn(lambda: _log(plan, rows, report, to_params(cfg), local, cfg), local, cfg.tracking_uri)
    return TransferResult(report, rows, [(u.model.model_id, u.q, u.split, u.shard) for u in units], uri, run_id)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run the job and print Table 11's row(s); bad input is one ``error:`` line and exit code 2."""
    cfg = parse(TransferConfig, argv, "python -m evaluation.transfer", __doc__.split("\n\n")[0])
    try:
        result = run(cfg)
    except (TransferError, FitError, ModelError, ManifestError, PrepareError, storage.StorageError,
            cluster.ClusterError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(result.report.markdown())
    print(f"report: {result.report_uri}" + (f"  (MLflow run {result.run_id})" if result.run_id else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
