"""MLflow for one training job, written by rank 0 only: params, metrics, system metrics, checkpoint URIs, the model.

Tracking must never stop training: the first failed call (server gone, disk full) prints one warning and turns the
tracker off for the rest of the job; the checkpoints still hold everything.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

MODEL_URI_TAG = "verydeep.model_uri"  # the best model directory of the run (read by `--init-from` and the sweep)
LATEST_TAG = "verydeep.checkpoint_latest"
PARENT_TAG = "mlflow.parentRunId"


class Tracker:
    """One MLflow run; every method is a no-op on other ranks, when disabled, or after the first failure."""

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment: str) -> None:
        self.enabled, self.tracking_uri, self.experiment = enabled, tracking_uri, experiment
        # MLflow's HTTP client retries a dead server for minutes per call by default; a training step must not
        # wait that long. Users can still set their own values.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.run_id: str | None = None
        self._client: Any = None

    def _fail(self, what: str, error: BaseException) -> None:
        self.enabled = False
        reason = " ".join(str(error).split())[:200]
        print(f"WARNING: MLflow tracking stopped ({what}: {type(error).__name__}: {reason}); training goes on, "
              "checkpoints hold the results", file=sys.stderr, flush=True)
        self._release()

    def _release(self) -> None:
        """Leave no active run or system-metrics thread behind in this process (best effort, server likely gone)."""
        import mlflow
        from mlflow.tracking import fluent

        monitor = getattr(fluent, "run_id_to_system_metrics_monitor", {}).pop(self.run_id, None)
        for close in ((monitor.finish if monitor is not None else None), mlflow.end_run):
            if close is None:
                continue
            try:
                close()
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

    def start(self, run_id: str | None, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        """Open the run: resume ``run_id`` when given (a resumed job), else create it and log the params."""
        if not self.enabled:
            return

        def open_run() -> str:
            import mlflow

            if self.tracking_uri:
                mlflow.set_tracking_uri(self.tracking_uri)
            self._client = mlflow.MlflowClient()
            if run_id is not None:
                mlflow.start_run(run_id=run_id, log_system_metrics=True)
            else:
                mlflow.set_experiment(self.experiment)
                mlflow.start_run(run_name=run_name, tags=dict(tags), log_system_metrics=True)
                # At most 100 params per call (MLflow's batch limit).
                items = list(params.items())
                for i in range(0, len(items), 100):
                    mlflow.log_params(dict(items[i:i + 100]))
            return mlflow.active_run().info.run_id

        self.run_id = self._call("start run", open_run)

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        """Log metrics at optimiser step ``step``."""
        if self.run_id is None:
            return
        import mlflow

        self._call("log metrics", mlflow.log_metrics, {k: float(v) for k, v in values.items()}, step=step)

    def tag(self, key: str, value: str) -> None:
        """Set a run tag (checkpoint URIs)."""
        if self.run_id is None:
            return
        import mlflow

        self._call("set tag", mlflow.set_tag, key, value)

    def artifact_text(self, text: str, name: str) -> None:
        """Store a small text file (e.g. the resolved config) with the run."""
        if self.run_id is None:
            return
        import mlflow

        self._call("log text", mlflow.log_text, text, name)

    def log_model(self, model: Any, registered_name: str, alias: str = "best") -> None:
        """Log the final (best) model with mlflow.pytorch, register it and point ``alias`` at the new version."""
        if self.run_id is None:
            return

        def log() -> None:
            import mlflow

            import numpy as np
            import torch

            crop = getattr(model, "crop", 224)
            # Pickle keeps any batch size (a pt2 export fixes the example's); loading needs verydeep installed.
            # Explicit requirements skip MLflow's slow import-capturing subprocess.
            info = mlflow.pytorch.log_model(
                model, name="model", registered_model_name=registered_name, serialization_format="pickle",
                input_example=np.zeros((1, 3, crop, crop), np.float32),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            version = getattr(info, "registered_model_version", None)
            if version is not None:
                self._client.set_registered_model_alias(registered_name, alias, str(version))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pip-requirement inference warnings are noise here
            self._call("log model", log)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with ``status`` (FINISHED, FAILED or KILLED)."""
        if self.run_id is None:
            return
        import mlflow

        self._call("end run", mlflow.end_run, status=status)
