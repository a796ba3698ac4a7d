"""The sweep in MLflow: a parent run (config, combination metrics, tables, plot), a child run per (net, Q, method).

Tracking never loses results: the tables, plot and posteriors are on disk first. A failing server costs one warning.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from evaluation.methods import LABELS
from evaluation.report import Report

SWEEP_TAG = "verydeep.sweep"  # on every run of a sweep: the data id, so child runs of one sweep can be found


def log_sweep(report: Report, params: Mapping[str, str], report_dir: Path, *, tracking_uri: str | None,
              experiment: str, run_name: str | None, data: str) -> str | None:
    """Log the report; returns the parent run's id, or None (with a warning) when MLflow cannot be reached."""
    try:
        return _log(report, params, report_dir, tracking_uri, experiment, run_name, data)
    except Exception as e:  # any tracking failure: the results are already written, say so and go on
        print(f"WARNING: MLflow logging failed ({type(e).__name__}: {' '.join(str(e).split())[:200]}); the results "
              f"are in {report_dir}", file=sys.stderr, flush=True)
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
            name = f"{cell.model.label} Q={cell.q} {LABELS[cell.method]}"
            with mlflow.start_run(run_name=name, nested=True, tags=tags):
                mlflow.log_params({"model": cell.model.label, "model_id": cell.model.model_id,
                                   "model_source": cell.model.source, "arch": cell.model.card.arch,
                                   "train_scale": cell.model.scale, "q": cell.q, "method": cell.method})
                mlflow.log_metrics(cell.metrics())
        for table in report.tables:
            if table.rows:
                mlflow.log_table(table.columns_dict(), artifact_file=f"tables/{table.name}.json")
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
        return parent.info.run_id
