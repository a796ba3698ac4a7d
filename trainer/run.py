"""Train one net of Table 1 on a Ray cluster: ``python -m trainer.run --arch E --data s3://bucket/shards``.

    ray job submit --address http://HEAD:8265 --working-dir . -- python -m trainer.run --arch E --workers 32 \\
        --data s3://bucket/imagenet --storage s3://bucket/ckpt --tracking-uri http://mlflow:5000
    python -m trainer.run --config a_256 --smoke          # one machine, a local Ray, a minute on a CPU

Everything that can be checked before cluster time is spent is checked first (manifest, storage, init source,
resources, tracking), each failure one ``error:`` line and exit code 2. The same command with the same ``--name``
and ``--storage`` resumes from the latest checkpoint into the same MLflow run. Ray is found as every command finds it
(``pipeline.cluster``): ``--ray-address``, else ``RAY_ADDRESS`` (set inside a Ray job), else a cluster running on
this machine, else a local Ray. Inside a Ray job a relative ``--storage`` or tracking store is refused: it
would vanish with the job's working directory.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import cluster, models, storage
from pipeline.dataset import TRAIN, VAL, SplitDataConfig, read_shards
from pipeline.manifest import FORMAT, Manifest, ManifestError, load_manifest
from pipeline.models import MODEL_URI_TAG
from pipeline.verify import ShardError, error_line, inspect_shards
from trainer import checkpoint as ckpt
from trainer import schedule
from trainer.config import TrainConfig, derived, parse_args, to_dict, to_params
from trainer.distributed import torch_config
from trainer.loop import KEEP_SCORE, JobInfo, make_model, train_loop
from trainer.tracking import GAP_TAG, GAP_TEXT, NOTE_TAG, PARENT_TAG, Tracker, bound_mlflow_retries, description
from vgg.card import load_model

PROG = "python -m trainer.run"
SMOKE_DATA = "digits"  # what --smoke trains on without --data: pipeline.digits, prepared once into the cache


class JobError(ValueError):
    """A problem found before training starts; the message is the one line the user sees."""


def cache_dir() -> Path:
    """Where derived local data (the smoke dataset's shards) is kept between runs."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "verydeep"


def smoke_manifest() -> str:
    """The digits set rendered and prepared into the cache (once); its manifest path."""
    from pipeline.digits import render_digits
    from pipeline.prepare import PrepareConfig, prepare

    root = cache_dir() / SMOKE_DATA
    manifest = root / "shards" / "manifest.json"
    if not manifest.exists() or json.loads(manifest.read_text()).get("format") != FORMAT:  # absent, or older
        print(f"preparing the smoke dataset (scikit-learn's digits) into {root} ...", flush=True)
        render_digits(root / "images")
        prepare(PrepareConfig(src=str(root / "images"), dst=str(root / "shards")))
    return str(manifest)


def tracking_uri(cfg: TrainConfig) -> str:
    """The MLflow tracking URI: the flag, else MLFLOW_TRACKING_URI, else a local store in the working directory --
    made absolute so that workers in other directories write to the same store. Inside a Ray job a relative store
    would vanish with the job's working directory: JobError."""
    uri = cfg.run.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    check_job_output("--tracking-uri", uri, "an http(s):// MLflow server (or an absolute sqlite://// path on shared "
                                            "storage)")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    elif uri.startswith("file:") and not uri.startswith("file:///"):
        uri = Path(uri[len("file:"):]).resolve().as_uri()
    elif "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    return uri


def absolute_storage(uri: str) -> str:
    """Ray Train wants an absolute local path or a URI; inside a Ray job a relative path is refused (JobError)."""
    check_job_output("--storage", uri, "an absolute path on shared storage or s3://bucket/prefix")
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def check_job_output(flag: str, uri: str, instead: str) -> None:
    """Raise JobError when a Ray job would write ``uri`` into Ray's session directory, where it vanishes."""
    try:
        cluster.check_job_output(flag, uri, instead)
    except cluster.ClusterError as e:
        raise JobError(str(e)) from None


def check_init_source(cfg: TrainConfig, num_classes: int, tracking: str, classes: Sequence[str] = ()) -> None:
    """Load ``--init-from`` and apply it to a fresh net of this config, so a wrong arch or shape fails here."""
    from trainer.loop import init_from

    model = make_model(cfg, num_classes)
    try:
        init_from(model, cfg, tracking, classes)
    except ValueError as e:  # CheckpointError, or the strict load / transfer naming the mismatching layer
        raise JobError(f"cannot initialise from {cfg.model.init_from}: {e}") from None


def check_resources(cfg: TrainConfig) -> bool:
    """Whether to use GPUs; raises JobError when the cluster cannot hold the workers asked for."""
    import ray

    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), total.get("CPU", 0)
    want_gpu = cfg.cluster.gpu == "true" or (cfg.cluster.gpu == "auto" and gpus > 0)
    workers = cfg.cluster.workers
    if want_gpu and gpus < workers:
        raise JobError(f"--workers {workers} with GPUs needs {workers} GPUs; the Ray cluster has {gpus}")
    need = workers * cfg.cluster.cpus_per_worker
    if need > cpus:
        raise JobError(f"--workers {workers} x --cpus-per-worker {cfg.cluster.cpus_per_worker:g} needs {need:g} "
                       f"CPUs; the Ray cluster has {cpus:g}")
    return want_gpu


def check_resume(cfg: TrainConfig, state: ckpt.TrainState) -> None:
    """A resumed run must train the same net on the same data."""
    old = state.config
    for section, name in (("model", "arch"), ("model", "width"), ("model", "fc_width"), ("model", "crop"),
                          ("data", "data")):
        before, now = old.get(section, {}).get(name), to_dict(cfg)[section][name]
        if before != now:
            raise JobError(f"run {cfg.run_name!r} in {cfg.run.storage} was started with {name}={before!r}, not "
                           f"{now!r}: pass another --name to start a new run")


def start_ray(address: str | None = None) -> None:
    """Join or start Ray by the rule of every command (pipeline.cluster): --ray-address, RAY_ADDRESS, a running
    cluster, else a local Ray with room for Ray Data beside Train."""
    try:
        # A local Ray with its dashboard, which serves Ray's state API: Ray Train's placement-group cleaner asks it
        # every second whether the controller lives, and without it logs a warning each time.
        cluster.connect(address, dashboard=True)
    except cluster.ClusterError as e:
        raise JobError(str(e)) from None
    if cluster.started_here():
        # A Ray of this process alone has no node that could be drained: Ray Train's preemption watcher has nothing
        # to watch, and starting it logs a core_worker error line (its arguments live in the object store).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@dataclass(frozen=True)
class SplitSource:
    """One split's Ray Data dataset, built when Ray Train starts its workers and again whenever it restarts them.

    Ray Train calls a dataset factory on every worker-group start; building the dataset there lets the training
    split begin at the epoch the run resumes from (read from the run's latest checkpoint, the one Ray Train restores),
    so that a restart in epoch e reads epoch e in the order an uninterrupted run did. A dataset built once in the
    driver would restart its epoch count at the driver's start and hand the restarted epoch other rows.
    """

    uris: tuple[str, ...]
    seed: int | None  # None: no shuffle (evaluation splits)
    cap: int | None
    cache: bool
    storage_uri: str
    run_name: str

    def start_epoch(self) -> int:
        """The epoch the run goes on from: its latest checkpoint's (mid-epoch ones included), else 0."""
        latest = ckpt.find_latest(self.storage_uri, self.run_name) if self.seed is not None else None
        return latest[1].epoch if latest else 0

    def __call__(self) -> Any:
        from ray.data import DataContext

        # The job prints its own progress lines; Ray Data's bars and plan lines for every epoch's execution would
        # bury them. Datasets take the context of the process that builds them (Ray Train's controller), here.
        context = DataContext.get_current()
        context.enable_progress_bars, context.print_on_execution_start = False, False
        fs, _ = storage.resolve(self.uris[0])
        ds = read_shards(list(self.uris), filesystem=fs, shuffle_seed=self.seed, start_epoch=self.start_epoch(),
                         cache=self.cache)
        return ds.limit(self.cap) if self.cap is not None else ds


def datasets(cfg: TrainConfig, manifest: Manifest) -> dict[str, SplitSource]:
    """The train and val splits as dataset factories (train reshuffled each epoch, seeded by (seed, epoch))."""
    out = {}
    for split, seed in ((TRAIN, cfg.run.seed), (VAL, None)):
        uris = manifest.shard_uris(split)
        if not uris:
            raise JobError(f"the manifest {cfg.data.data} lists no {split} shards")
        cap = cfg.data.max_train_images if split == TRAIN else cfg.data.max_val_images
        # Each epoch re-executes a streamed dataset, seconds of start-up that dominate on small data.
        size_mb = sum(shard.bytes for shard in manifest.split(split).shards) / 2**20
        out[split] = SplitSource(tuple(uris), seed, cap, size_mb <= cfg.data.cache_mb,
                                 absolute_storage(cfg.run.storage), cfg.run_name)
    return out


def plan(cfg: TrainConfig) -> tuple[TrainConfig, Manifest, str, tuple[str, ckpt.TrainState] | None]:
    """The checks before cluster time: data, storage, resume state, init source. Raises JobError."""
    if cfg.data.data is None:  # only --smoke gets here without data (the config insists otherwise)
        from trainer.config import compose

        cfg = compose(to_dict(cfg), {"data": smoke_manifest()})
    try:
        manifest = load_manifest(cfg.data.data)  # type: ignore[arg-type]
        inspect_shards(manifest, [TRAIN, VAL])  # a truncated shard or a damaged footer: one line, before any run
        storage.check_access(cfg.run.storage, create=True)
    except (ManifestError, storage.StorageError) as e:
        raise JobError(str(e)) from None
    target = manifest.options.get("target")
    if isinstance(target, dict) and target.get("multilabel"):
        raise JobError(f"{cfg.data.data} is a multi-label target ({target.get('layout')}): training fits one label "
                       "per image; its transfer protocol is python -m evaluation.transfer")
    if cfg.data.num_classes is not None and cfg.data.num_classes != manifest.num_classes:
        raise JobError(f"--num-classes {cfg.data.num_classes} but the manifest has {manifest.num_classes} classes")
    tracking = tracking_uri(cfg)
    latest = ckpt.find_latest(absolute_storage(cfg.run.storage), cfg.run_name)
    if latest is not None:
        check_resume(cfg, latest[1])
    elif cfg.model.init_from is not None:
        check_init_source(cfg, manifest.num_classes, tracking, manifest.wnids)
    return cfg, manifest, tracking, latest


def steps_per_epoch(cfg: TrainConfig, manifest: Manifest) -> int:
    """Optimiser steps per epoch: each worker gets an equal share of the images, in full per-worker batches."""
    n = manifest.split(TRAIN).count
    if cfg.data.max_train_images is not None:
        n = min(n, cfg.data.max_train_images)
    steps = (n // cfg.cluster.workers) // cfg.per_worker_batch
    if steps == 0:
        raise JobError(f"{n} training images make no full batch of {cfg.optim.batch_size}: lower --batch-size")
    return steps


def open_tracking(cfg: TrainConfig, tracking: str, run_id: str | None, parent_run_id: str | None = None,
                  gpu: bool = False) -> Tracker:
    """The job's MLflow run: the resumed run's, or a new one with every param, the deviations from the paper and the
    description of what it reproduces (``gpu``: the workers compute on GPUs)."""
    tracker = Tracker(True, tracking, cfg.run.experiment)
    deviations = derived(cfg, gpu)["deviations_from_paper"]
    tags = {"verydeep.arch": cfg.model.arch, "verydeep.deviations": "; ".join(deviations) or "none",
            NOTE_TAG: description(cfg, deviations)}
    if parent_run_id is not None:
        tags[PARENT_TAG] = parent_run_id
    tracker.start(run_id, cfg.run_name, to_params(cfg, gpu), tags)
    if tracker.run_id is None:
        raise JobError(f"cannot open an MLflow run at {storage.redact(tracking) if '@' in tracking else tracking}")
    if run_id is None:
        tracker.artifact_text(yaml.safe_dump({**to_dict(cfg), "derived": derived(cfg, gpu)}, sort_keys=False),
                              "config.yaml")
    return tracker


def failure_reason(error: BaseException, max_failures: int) -> str:
    """What broke, in one line: the root cause under Ray Train's wrappers (a worker's own exception, a worker's
    death, the controller's error), not the wrappers' text."""
    where, seen = "", set()
    while id(error) not in seen:
        seen.add(id(error))
        failures = getattr(error, "worker_failures", None)  # WorkerGroupError: the lowest failing rank's error
        if failures:
            rank = min(failures)
            where, error = f"worker {rank}: ", failures[rank]
            continue
        # ControllerError, WorkerHealthCheckFailedError (a dead worker's RayActorError), RayTaskError (the cause).
        inner = next((getattr(error, a) for a in ("controller_failure", "health_check_failure", "cause")
                      if isinstance(getattr(error, a, None), BaseException)), None)
        if inner is None and type(error).__module__.startswith("ray.") and error.__cause__ is not None:
            inner = error.__cause__
        if inner is None:
            break
        error = inner
    text = " ".join(str(error).split()) or "no message"
    reason = f"{where}{type(error).__name__}: {text[:400]}"
    return reason + (f" (restarts used up: --max-failures {max_failures})" if where else "")


def fit(cfg: TrainConfig, manifest: Manifest, tracking: str, latest: tuple[str, ckpt.TrainState] | None,
        parent_run_id: str | None = None) -> ckpt.TrainState:
    """Run the TorchTrainer to the end of the schedule; returns the final train state. Whatever ends the job after
    its MLflow run is open closes that run: FAILED (or KILLED) with the reason the CLI prints."""
    use_gpu = check_resources(cfg)
    state = latest[1] if latest else None
    steps = steps_per_epoch(cfg, manifest)  # a batch larger than the data fails before a run is opened
    tracker = open_tracking(cfg, tracking, state.mlflow_run_id if state else None, parent_run_id, use_gpu)
    try:
        return run_job(cfg, manifest, tracking, tracker, steps, use_gpu, state)
    except JobError as e:
        tracker.end("FAILED", str(e))
        raise
    except Exception as e:
        # A damaged shard found by a worker's read names itself in its own line.
        reason = error_line(e) or f"training failed: {failure_reason(e, cfg.cluster.max_failures)}"
        tracker.end("FAILED", reason)
        raise JobError(reason) from None
    except BaseException as e:  # Ctrl-C, SystemExit
        tracker.end("KILLED", f"interrupted ({type(e).__name__})")
        raise


def run_job(cfg: TrainConfig, manifest: Manifest, tracking: str, tracker: Tracker, steps: int, use_gpu: bool,
            state: ckpt.TrainState | None) -> ckpt.TrainState:
    """The job inside its open MLflow run: Ray Train to the end of the schedule, then the best model logged."""
    import ray.train
    from ray.train.torch import TorchTrainer

    start_epoch = state.epoch if state else 0
    storage_uri = absolute_storage(cfg.run.storage)
    info = JobInfo(mean=tuple(map(float, manifest.mean_rgb)), eigval=tuple(map(float, manifest.eigval)),
                   eigvec=tuple(tuple(map(float, row)) for row in manifest.eigvec), wnids=tuple(manifest.wnids),
                   steps_per_epoch=steps, run_dir=ckpt.run_dir(storage_uri, cfg.run_name),
                   mlflow_run_id=tracker.run_id, tracking_uri=tracking,
                   step_delay_s=float(os.environ.get("VERYDEEP_STEP_DELAY_S", "0") or 0),
                   keys_log=os.environ.get("VERYDEEP_KEYS_LOG") or None)
    print(f"{cfg.run_name}: VGG-{cfg.model.arch} on {cfg.cluster.workers} {'GPU' if use_gpu else 'CPU'} worker(s), "
          f"batch {cfg.optim.batch_size} ({cfg.per_worker_batch}/worker, {cfg.accumulation_steps} micro-batches), "
          f"{info.steps_per_epoch} steps/epoch, S={cfg.data.train_scale}, Q={cfg.data.q}"
          + (f", resuming after epoch {start_epoch}" if state else ""), flush=True)
    fs = storage.resolve(storage_uri)[0] if storage.is_s3(storage_uri) else None
    # Ray Train's print patch sends each print of a worker to the console twice (the print, and a log record of it);
    # Ray Train passes this setting from the driver to its controller and workers.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": to_dict(cfg), "info": asdict(info)},
        torch_config=torch_config(use_gpu),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.cluster.workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cfg.cluster.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.run_name,
            storage_path=storage_uri.removeprefix("s3://") if fs is not None else storage_uri,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.cluster.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3, checkpoint_score_attribute=KEEP_SCORE,
                                                         checkpoint_score_order="max"),
            # Ray Train's INFO lines (worker group started, each checkpoint and report) repeat what the epoch line
            # says; its warnings and errors still show. Its log files keep every level.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets(cfg, manifest),
        dataset_config=SplitDataConfig(),
    )
    trainer.fit()
    final = ckpt.find_latest(storage_uri, cfg.run_name)
    if final is None:
        raise JobError(f"training ended without a checkpoint in {info.run_dir}")
    finish(tracker, cfg, final[1])
    return final[1]


def finish(tracker: Tracker, cfg: TrainConfig, state: ckpt.TrainState) -> None:
    """Log the best model with mlflow.pytorch, register it (alias ``best``), tag its URI, close the run."""
    tracker.reconnect()  # a server lost during the job: wait for it (bounded), so the record is complete
    best = state.best_checkpoint
    if best is not None:
        tracker.tag(MODEL_URI_TAG, best)
        with tempfile.TemporaryDirectory(prefix="verydeep-best-") as tmp:
            model, _ = load_model(models.fetch(best, tmp))
            tracker.log_model(model, registered_name=f"verydeep-{cfg.model.arch}")
    tracker.end("FINISHED")


def close_left_open(cfg: TrainConfig, tracking: str, state: ckpt.TrainState) -> None:
    """Close a complete job's MLflow run that is still RUNNING (the server was away when the job ended)."""
    import mlflow

    if state.mlflow_run_id is None:
        return
    bound_mlflow_retries()
    try:
        status = mlflow.MlflowClient(tracking).get_run(state.mlflow_run_id).info.status
    except Exception:  # still away: the next run of this command tries again
        return
    if status == "RUNNING":
        tracker = open_tracking(cfg, tracking, state.mlflow_run_id)
        tracker.tag(GAP_TAG, GAP_TEXT)
        finish(tracker, cfg, state)
        print(f"{cfg.run_name}: MLflow run {state.mlflow_run_id} closed as FINISHED", flush=True)


def ui_command(tracking: str) -> str:
    """The command that opens the MLflow UI on this job's tracking store (a server's URI is opened directly)."""
    if tracking.startswith(("http://", "https://")):
        return f"open {storage.redact(tracking)}"
    return f"mlflow ui --backend-store-uri {tracking}"


def complete(cfg: TrainConfig, state: ckpt.TrainState) -> bool:
    """Whether a run's schedule is over for this config (a larger ``--epochs`` reopens a budget stop)."""
    return schedule.extend(schedule.ScheduleState.from_dict(state.schedule), cfg.schedule).stopped


def train(cfg: TrainConfig, parent_run_id: str | None = None) -> tuple[TrainConfig, ckpt.TrainState, str]:
    """Check, then train to the end of the schedule (or find the run already complete); raises JobError."""
    # Inside a Ray job, outputs that would vanish with the job's working directory are refused before Ray starts.
    tracking_uri(cfg)
    absolute_storage(cfg.run.storage)
    # Ray Data's console at warnings (its logging configuration file): set before a local Ray starts, whose
    # processes (the split coordinators running each epoch's reads) inherit it.
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml")))
    start_ray(cfg.cluster.ray_address)
    cfg, manifest, tracking, latest = plan(cfg)
    if latest is not None and complete(cfg, latest[1]):
        print(f"{cfg.run_name}: already complete ({latest[1].epoch} epochs) in {latest[0]}", flush=True)
        close_left_open(cfg, tracking, latest[1])
        return cfg, latest[1], tracking
    return cfg, fit(cfg, manifest, tracking, latest, parent_run_id), tracking


def summary(cfg: TrainConfig, state: ckpt.TrainState, tracking: str) -> str:
    """The closing lines: epochs, the best and last validation errors (in %, as the paper gives them), where the best
    model is, how to open MLflow on the run."""
    last = state.history[-1] if state.history else {}
    best = next((h for h in state.history if h.get("val_top1") == state.best_val_top1), None)
    err = f"{100 * (1 - (state.best_val_top1 or 0)):.2f} %" + (f" at epoch {best['epoch']}" if best else "")
    return (f"done: {cfg.run_name} after {state.epoch} epochs, {state.step} steps; best val top-1 err {err}"
            + (f" (last epoch {100 * last['val_top1_err']:.2f} %)" if last else "")
            + f"\nmodel: {state.best_checkpoint} (runs:/{state.mlflow_run_id} in MLflow, registered as "
            f"verydeep-{cfg.model.arch}, alias best)\nMLflow: {ui_command(tracking)}  (run {state.mlflow_run_id})")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; known problems print one ``error:`` line and return 2, a failed training returns 1."""
    cfg = parse_args(argv, prog=PROG)
    try:
        cfg, state, tracking = train(cfg)
    except (JobError, ShardError) as e:  # ShardError: a damaged shard found while caching a split in this process
        print(f"error: {error_line(e) if isinstance(e, ShardError) else e}", file=sys.stderr)
        return 1 if str(e).startswith("training failed") else 2
    print(summary(cfg, state, tracking))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
