"""MLflow for one training job: the driver owns the run, rank 0 logs into it (metrics, checkpoint URIs, system metrics).

The driver opens the run (or reopens it on a resume) and closes it with the job's final status: FINISHED, FAILED
(any error once the run is open) or KILLED (Ctrl-C). A failure's one-line reason -- the line the CLI prints as
``error: ...`` -- is the run's ``verydeep.failure`` tag and its description (``mlflow.note.content``, shown at the
top of the run page); a resume of the same run clears both. The rank-0 worker attaches to the open run and never
changes its status, so a worker that dies cannot leave the run FINISHED (no fluent ``start_run``, whose exit hook
ends a run FINISHED, is used).

Tracking must never stop training. A failed call (server gone, disk full) prints one warning in that process (the
driver and the rank-0 worker warn at most once each) and turns its tracker off; the checkpoints still hold
everything. MLflow's HTTP retries are bounded (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1, MLFLOW_HTTP_REQUEST_TIMEOUT=10 unless
set) and the retry lines of urllib3 and the failure lines of MLflow's system-metrics thread are turned off through
their loggers' levels, so the warning is the only line an outage prints.

After an outage the driver waits for the server before it closes the run: up to VERYDEEP_MLFLOW_CLOSE_WAIT_S
(default 120 s) at the end of the job, then it logs what the job ended with (best model, tags), tags
``verydeep.tracking_gap`` (metrics from the outage are missing in MLflow, not in the checkpoints) and closes the run.
If the server stays away the run is left RUNNING and one line says so; the same command run again (same ``--name``
and ``--storage``) reopens the run and closes it at its end, or, when the schedule is already complete, closes it
FINISHED with the ``verydeep.tracking_gap`` tag.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from trainer.config import TrainConfig
from vgg.paper import CROP, TABLE3, TRAIN_SCALES

LATEST_TAG = "verydeep.checkpoint_latest"
PARENT_TAG = "mlflow.parentRunId"
FAILURE_TAG = "verydeep.failure"  # why the run ended FAILED or KILLED: the CLI's `error:` line
GAP_TAG = "verydeep.tracking_gap"  # set when the server was lost during the job and came back before the close
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
INIT_TAG = "verydeep.init"  # what --init-from copied (a fine-tuning run: FC8 re-initialised for the new classes)
CLOSE_WAIT_ENV = "VERYDEEP_MLFLOW_CLOSE_WAIT_S"
CLOSE_WAIT_S = 120.0
GAP_TEXT = ("the tracking server was unreachable during the job: metrics and tags of that time are missing here; "
            "the checkpoints' train_state.json holds the full history")


def bound_mlflow_retries() -> None:
    """Bound MLflow's HTTP retries (minutes per call by default) and silence the per-retry log lines; keep MLflow's
    own console output to warnings (read when mlflow is first imported, which this precedes)."""
    # Users can still set their own values.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # The job prints its own summary with the UI command: no "View run ... at" links on each close, no INFO lines
    # about creating a store's tables.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # urllib3 logs every retry of MLflow's HTTP client, and MLflow's system-metrics thread logs its own failure:
    # the tracker's single warning says it all.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)


def close_wait_s() -> float:
    """How long the driver waits for a lost server before giving up on closing the run."""
    return float(os.environ.get(CLOSE_WAIT_ENV) or CLOSE_WAIT_S)


class Tracker:
    """One MLflow run; every method is a no-op when disabled, or after a failure until the server is back."""

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment: str) -> None:
        self.enabled, self.tracking_uri, self.experiment = enabled, tracking_uri, experiment
        bound_mlflow_retries()
        self.run_id: str | None = None
        self.lost = False  # a call failed: quiet until `reconnect` finds the server again
        self._warned = False
        self._client: Any = None
        self._monitor: Any = None

    def _fail(self, what: str, error: BaseException) -> None:
        self.enabled, self.lost = False, True
        if not self._warned:
            self._warned = True
            reason = " ".join(str(error).split())[:200]
            # One write, not print(): Ray Train's print patch emits a worker's stderr print twice.
            sys.stderr.write(f"WARNING: MLflow tracking stopped ({what}: {type(error).__name__}: {reason}); training "
                             "goes on, checkpoints hold the results\n")
            sys.stderr.flush()
        self.release()

    def release(self) -> None:
        """Stop this process's system-metrics thread (best effort); the run's status is left to the driver."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                monitor.finish()
            except Exception:  # the server that just failed: nothing more to say about it
                pass

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # any tracking failure: warn once, go on
            self._fail(what, e)
            return None

    def _connect(self) -> Any:
        import mlflow

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)  # for log_model, which logs through the global URI
        self._client = mlflow.MlflowClient(self.tracking_uri)
        return self._client

    def start(self, run_id: str | None, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        """Open the run (the driver): reopen ``run_id`` when given (a resume; an earlier failure's tags are cleared),
        else create it with ``tags`` and log ``params``."""
        if not self.enabled:
            return

        def open_run() -> str:
            from mlflow.entities import Param
            from mlflow.tracking.context.registry import resolve_tags

            client = self._connect()
            if run_id is not None:
                client.update_run(run_id, status="RUNNING")
                old = client.get_run(run_id).data.tags
                for key in (FAILURE_TAG, GAP_TAG):
                    if key in old:
                        client.delete_tag(run_id, key)
                if NOTE_TAG in old and old[NOTE_TAG] == old.get(FAILURE_TAG):  # the run's description is back
                    if NOTE_TAG in tags:
                        client.set_tag(run_id, NOTE_TAG, tags[NOTE_TAG])
                    else:
                        client.delete_tag(run_id, NOTE_TAG)
                return run_id
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.experiment)
            # resolve_tags adds what fluent start_run would (user, source, git commit).
            new = client.create_run(exp_id, run_name=run_name, tags=resolve_tags(dict(tags))).info.run_id
            items = [Param(k, str(v)) for k, v in params.items()]
            for i in range(0, len(items), 100):  # at most 100 params per call (MLflow's batch limit)
                client.log_batch(new, params=items[i:i + 100])
            return new

        self.run_id = self._call("start run", open_run)

    def attach(self, run_id: str | None) -> None:
        """Log into the driver's open run from the rank-0 worker, with system metrics; never changes its status."""
        if not self.enabled or run_id is None:
            return

        def attach_run() -> str:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._connect()
            self._monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=self.tracking_uri)
            self._monitor.start()
            return run_id

        self.run_id = self._call("attach to run", attach_run)

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        """Log metrics at optimiser step ``step``."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items()]
        self._call("log metrics", lambda: self._client.log_batch(self.run_id, metrics=batch))

    def tag(self, key: str, value: str) -> None:
        """Set a run tag (checkpoint URIs)."""
        if self.run_id is None:
            return
        self._call("set tag", lambda: self._client.set_tag(self.run_id, key, value))

    def artifact_text(self, text: str, name: str) -> None:
        """Store a small text file (e.g. the resolved config) with the run."""
        if self.run_id is None:
            return
        self._call("log text", lambda: self._client.log_text(self.run_id, text, name))

    def log_model(self, model: Any, registered_name: str, alias: str = "best") -> None:
        """Log the final (best) model with mlflow.pytorch, register it and point ``alias`` at the new version."""
        if self.run_id is None:
            return

        def log() -> None:
            import mlflow

            import numpy as np
            import torch

            # The logged model belongs to the active experiment, not to the run's: make them the same.
            mlflow.set_experiment(experiment_id=self._client.get_run(self.run_id).info.experiment_id)
            crop = getattr(model, "crop", CROP)
            # Pickle keeps any batch size (a pt2 export fixes the example's); loading needs verydeep installed.
            # Explicit requirements skip MLflow's slow import-capturing subprocess.
            info = mlflow.pytorch.log_model(
                model, name="model", registered_model_name=registered_name, serialization_format="pickle",
                input_example=np.zeros((1, 3, crop, crop), np.float32),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"], run_id=self.run_id)
            version = getattr(info, "registered_model_version", None)
            if version is not None:
                self._client.set_registered_model_alias(registered_name, alias, str(version))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pip-requirement inference warnings are noise here
            self._call("log model", log)

    def reconnect(self) -> bool:
        """Whether the server answers (the driver, before closing): after a failure, wait for it up to
        ``close_wait_s()``; when it is back, tracking is on again and the gap is tagged."""
        if self.run_id is None:
            return False
        if not self.lost:
            self._call("get run", lambda: self._client.get_run(self.run_id))
            if not self.lost:
                return self.enabled
        wait = close_wait_s()
        print(f"MLflow: waiting up to {wait:g} s for the tracking server to close run {self.run_id}", flush=True)
        deadline = time.monotonic() + wait
        while True:
            try:
                self._client.get_run(self.run_id)
                break
            except Exception:
                if time.monotonic() >= deadline:
                    print(f"MLflow: the tracking server did not answer within {wait:g} s; run {self.run_id} is "
                          "left RUNNING: run the same command again to close it", flush=True)
                    return False
                time.sleep(1.0)
        self.enabled, self.lost = True, False
        self.tag(GAP_TAG, GAP_TEXT)
        return self.enabled

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Close the run with ``status`` (FINISHED, FAILED or KILLED), ``reason`` as its failure tag and description;
        after an outage, once the server is back (see ``reconnect``)."""
        if self.run_id is None or (self.lost and not self.reconnect()):
            return

        def close() -> None:
            if reason:
                self._client.set_tag(self.run_id, FAILURE_TAG, reason)
                self._client.set_tag(self.run_id, NOTE_TAG, reason)
            self._client.set_terminated(self.run_id, status)

        self._call("end run", close)


def description(cfg: TrainConfig, deviations: Sequence[str]) -> str:
    """The run's description in MLflow: the row of the paper's Table 3 it reproduces (or that it reproduces none),
    and how it deviates from the paper."""
    arch, scale, crop = cfg.model.arch, cfg.data.train_scale, cfg.model.crop
    # A smaller crop keeps the paper's S/crop ratio when its S is the paper's S at that crop.
    paper_scale = next((s for s in TRAIN_SCALES if (s if crop == CROP else s.at_crop(crop)) == scale), None)
    row = TABLE3.get((arch, paper_scale)) if paper_scale is not None else None
    if row is not None:
        text = (f"Reproduces Table 3, ConvNet config. {arch}, train S {paper_scale}"
                + (f" (here S={scale} at crop {crop}, the same S/crop ratio)" if crop != CROP else "")
                + f": the paper's top-1 / top-5 val. error {row[0]} / {row[1]} % at a single test scale.")
    else:
        text = (f"Reproduces no row of the paper's tables: Table 3 has no VGG-{arch} trained at S={scale}"
                + (f" with crop {crop}" if crop != CROP else "") + ".")
    return text + "\n\nDeviations from the paper: " + ("; ".join(deviations) or "none") + "."
