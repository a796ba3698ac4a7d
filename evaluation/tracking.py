"""The sweep in MLflow: a parent run (config, combination metrics, tables, plot), a child run per (net, Q, method).

Tracking never loses results: the tables, plot and posteriors are on disk first. A failing server costs one warning
and under 30 s: a server that does not accept a connection within PROBE_TIMEOUT_S is given up at once,
and one that does but then fails costs each call two tries of at most 4 s (MLflow's defaults retry a call for minutes;
MLFLOW_HTTP_REQUEST_* set by the user still win): the failing call and the two runs' closes, under 30 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from evaluation.methods import label
from evaluation.report import Report

SWEEP_TAG = "verydeep.sweep"  # on every run of a sweep: the data id, so child runs of one sweep can be found
PROBE_TIMEOUT_S = 5.0
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "4"}


def unreachable(tracking_uri: str | None) -> str | None:
    """Why an HTTP tracking server cannot be reached (no connection within PROBE_TIMEOUT_S), or None."""
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return None  # a local store (sqlite, files) or MLflow's default: nothing to probe
    url = urlsplit(tracking_uri)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"cannot connect to {url.hostname}:{port} ({e.strerror or type(e).__name__})"
    return None


@contextlib.contextmanager
def bounded_http() -> Iterator[None]:
    """MLflow's HTTP retries bounded for the duration (unless the user set them), urllib3's retry lines off."""
    added = {k: v for k, v in HTTP_LIMITS.items() if k not in os.environ}
    os.environ.update(added)
    retries = logging.getLogger("urllib3.connectionpool")
    level = retries.level
    retries.setLevel(logging.ERROR)  # one line per retry otherwise; the warning below says what failed
    try:
        yield
    finally:
        retries.setLevel(level)
        for k in added:
            os.environ.pop(k, None)


def log_sweep(report: Report, params: Mapping[str, str], report_dir: Path, *, tracking_uri: str | None,
              experiment: str, run_name: str | None, data: str) -> str | None:
    """Log the report; returns the parent run's id, or None (with a warning) when MLflow cannot be reached."""
    why = unreachable(tracking_uri)
    try:
        if why is None:
            with bounded_http():
                return _log(report, params, report_dir, tracking_uri, experiment, run_name, data)
    except Exception as e:  # any tracking failure: the results are already written, say so and go on
        why = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    print(f"WARNING: MLflow logging failed ({why}); the results are in {report_dir}", file=sys.stderr, flush=True)
    return None


def _log(report: Report, params: Mapping[str, str], report_dir: Path, tracking_uri: str | None, experiment: str,
         run_name: str | None, data: str) -> str:
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    tags = {SWEEP_TAG: data}
    with mlflow.start_run(run_name=run_name or f"sweep {data}", tags=tags) as parent:
        mlflow.log_params(dict(params))
        mlflow.log_metrics(report.summary)
        for cell in report.cells:
            name = f"{cell.model.label} Q={cell.q} {label(cell.method, cell.flip)}"
            with mlflow.start_run(run_name=name, nested=True, tags=tags):
                mlflow.log_params({"model": cell.model.label, "model_id": cell.model.model_id,
                                   "model_source": cell.model.source, "arch": cell.model.card.arch,
                                   "train_scale": cell.model.scale, "q": cell.q, "method": cell.method,
                                   "flip": cell.flip})
                mlflow.log_metrics(cell.metrics())
        for table in report.tables:
            if table.rows:
                mlflow.log_table(table.columns_dict(), artifact_file=f"tables/{table.name}.json")
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
        return parent.info.run_id
