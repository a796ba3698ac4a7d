"""The sweep in MLflow: a parent run that spans the sweep, a child run per (net, Q, method).

The parent run opens when the sweep starts (after its input is checked) and closes when it ends: FINISHED, FAILED
with the error line as its description, or KILLED on Ctrl-C. It holds the config as params, the shard manifest's
split as a dataset input (digest: the sweep's data id), the multi-scale and fusion errors as metrics, Tables 3-6 as
its description (``mlflow.note.content``, markdown) and as logged tables, and the report directory with the plot.
Each child run is named as the paper writes a row (``A S[256,512] Q384 multi-crop``) and holds its errors in %.

Tracking never loses results: the tables, plot and posteriors are on disk first. A failing server costs one warning
and under 30 s: a server that does not accept a connection within PROBE_TIMEOUT_S is given up at once,
and one that does but then fails costs each call two tries of at most 4 s (MLflow's defaults retry a call for minutes;
MLFLOW_HTTP_REQUEST_* set by the user still win): the failing call and the run's close, under 30 s. After a failure
the sweep goes on without MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from evaluation.methods import CROPS_PER_SCALE, DENSE, short_name
from evaluation.models import LoadedModel
from evaluation.report import Cell, Report, net_name

MLFLOW_DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default store when no tracking URI is set
SWEEP_TAG = "verydeep.sweep"  # on every run of a sweep: the data id, so child runs of one sweep can be found
NOTE_TAG = "mlflow.note.content"  # a run's description in MLflow's UI (markdown)
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # the UI's "Machine learning" experiments
MAX_NOTE = 8000  # MLflow's limit on a tag value
DATASET_CONTEXT = "evaluation"
PROBE_TIMEOUT_S = 5.0
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "4"}
# The shard columns as an MLflow schema (pipeline.shards.SCHEMA's types in MLflow's names).
SHARD_COLUMNS = (("key", "string"), ("label", "integer"), ("wnid", "string"), ("image", "binary"),
                 ("height", "integer"), ("width", "integer"))


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


@dataclass(frozen=True)
class SweepData:
    """What the sweep evaluates, as its MLflow dataset input: the manifest's split, limited to the images taken."""

    manifest_uri: str  # the manifest file
    split: str
    data_id: str  # evaluation.posteriors.data_id: the digest
    images: int
    shards: tuple[tuple[str, int], ...]  # (shard URI, rows taken)
    classes: int

    @property
    def name(self) -> str:
        """The dataset's name in MLflow: the directory of its manifest and the split (``imagenet-shards/val``)."""
        parts = self.manifest_uri.split("/")
        return f"{parts[-2] if len(parts) > 1 else parts[-1]}/{self.split}"


def dataset_input(data: SweepData) -> Any:
    """The split as an MLflow ``DatasetInput``: the manifest as source, the data id as digest, the shard columns as
    schema, images, classes and shards as profile."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema

    schema = Schema([ColSpec(kind, name) for name, kind in SHARD_COLUMNS])
    with warnings.catch_warnings():
        # MLflow registers its local source for two URI schemes and warns on every local path that both match.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(data.manifest_uri)
    meta = MetaDataset(source, name=data.name, digest=data.data_id, schema=schema)
    profile = {"split": data.split, "images": data.images, "classes": data.classes,
               "shards": [{"uri": uri, "rows": rows} for uri, rows in data.shards]}
    return DatasetInput(Dataset(**meta.to_dict(), profile=json.dumps(profile)),
                        tags=[InputTag("mlflow.data.context", DATASET_CONTEXT)])


def child_name(cell: Cell) -> str:
    """A child run's name, as the paper writes a row: ``A S[256,512] Q384 multi-crop``."""
    return f"{net_name(cell.model)} Q{cell.q} {short_name(cell.method)}"


def child_params(cell: Cell) -> dict[str, Any]:
    """A child run's params: which net, Q, method, and how (flips, crops per scale)."""
    m: LoadedModel = cell.model
    params = {"model": m.label, "model_id": m.model_id, "model_source": m.source, "arch": m.card.arch,
              "train_scale": m.scale, "q": cell.q, "method": cell.method, "flip": "on" if cell.flip else "off"}
    if cell.method != DENSE:  # multi-crop, alone or with dense
        params["crops_per_scale"] = CROPS_PER_SCALE if cell.flip else CROPS_PER_SCALE // 2
    return params


def note(text: str) -> str:
    """A description that fits MLflow's tag limit, cut at a line, saying where the rest is."""
    if len(text) <= MAX_NOTE:
        return text
    tail = "\n\n(cut to fit MLflow's description limit: every table is under the run's artifacts, report/)\n"
    return text[: text.rfind("\n", 0, MAX_NOTE - len(tail))] + tail


class SweepRun:
    """The sweep's parent run from start to end; after any tracking failure, one warning and no further calls."""

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str, data: str,
                 results: str) -> None:
        self.tracking_uri, self.experiment, self.run_name, self.data = tracking_uri, experiment, run_name, data
        self.results = results  # where the results are, for the warning
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def _call(self, what: Callable[[], Any]) -> bool:
        """Run one tracking step; on failure warn once, drop the run and return False."""
        if self.client is None:
            return False
        try:
            with bounded_http():
                what()
            return True
        except Exception as e:  # any tracking failure: the results are on disk, say so and go on
            self._give_up(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
            return False

    def _give_up(self, why: str) -> None:
        print(f"WARNING: MLflow logging failed ({why}); the results are in {self.results}", file=sys.stderr,
              flush=True)
        self.client = None

    def start(self, params: Mapping[str, str], dataset: SweepData, description: str) -> None:
        """Open the parent run with the config, the dataset input and a description of what runs."""
        import mlflow

        why = unreachable(self.tracking_uri)
        if why is not None:
            self._give_up(why)
            return
        self.client = mlflow.MlflowClient(self.tracking_uri)

        def open_run() -> None:
            exp = self.client.get_experiment_by_name(self.experiment)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
            if not exp or KIND_TAG not in exp.tags:  # else MLflow's UI guesses, and took the sweep for GenAI evals
                self.client.set_experiment_tag(self.experiment_id, KIND_TAG, KIND)
            run = self.client.create_run(self.experiment_id, run_name=self.run_name,
                                         tags={SWEEP_TAG: self.data, NOTE_TAG: note(description)})
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
            self.client.log_inputs(self.run_id, datasets=[dataset_input(dataset)])

        self._call(open_run)

    def finish(self, report: Report, report_dir: Path, description: str) -> str | None:
        """Log the results (children, metrics, tables, report files, description) and close the run FINISHED;
        the run's id, or None when tracking failed."""
        import mlflow

        client, run_id = self.client, self.run_id

        def log() -> None:
            for cell in report.cells:
                child = client.create_run(self.experiment_id, run_name=child_name(cell),
                                          tags={SWEEP_TAG: self.data, "mlflow.parentRunId": run_id})
                client.log_batch(child.info.run_id,
                                 params=[mlflow.entities.Param(k, str(v)) for k, v in child_params(cell).items()])
                client.log_batch(child.info.run_id, metrics=metrics(cell.metrics()))
                client.set_terminated(child.info.run_id)
            client.log_batch(run_id, metrics=metrics(report.summary))
            for table in report.tables:
                if table.rows:
                    client.log_table(run_id, table.columns_dict(), artifact_file=f"tables/{table.name}.json")
            client.log_artifacts(run_id, str(report_dir), artifact_path="report")
            client.set_tag(run_id, NOTE_TAG, note(description))
            client.set_terminated(run_id, "FINISHED")

        return run_id if self._call(log) else None

    def end(self, status: str, why: str) -> None:
        """Close the run as FAILED or KILLED, the reason as its description."""
        client, run_id = self.client, self.run_id

        def close() -> None:
            client.set_tag(run_id, NOTE_TAG, f"**{status}**: {why}")
            client.set_terminated(run_id, status)

        if run_id is not None:
            self._call(close)

    def ui_hint(self) -> str | None:
        """How to open this run in MLflow's UI, artifacts included; None when it was not logged."""
        if self.run_id is None or self.client is None:
            return None
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or MLFLOW_DEFAULT_URI
        page = f"#/experiments/{self.experiment_id}/runs/{self.run_id}"
        if uri.startswith(("http://", "https://")):
            return f"MLflow: {uri.rstrip('/')}/{page}"
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"  # the command works from anywhere
        mlflow = Path(sys.executable).parent / "mlflow"
        return (f"MLflow: {mlflow} ui --backend-store-uri {uri} --port 5000\n"
                f"  then open http://127.0.0.1:5000/{page}")


def log_or_warn(log: Callable[[], str], report_dir: Path, tracking_uri: str | None) -> str | None:
    """Run ``log`` (it returns the parent run's id) with bounded retries; on any failure one warning and None."""
    why = unreachable(tracking_uri)
    try:
        if why is None:
            with bounded_http():
                return log()
    except Exception as e:  # any tracking failure: the results are already written, say so and go on
        why = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    print(f"WARNING: MLflow logging failed ({why}); the results are in {report_dir}", file=sys.stderr, flush=True)
    return None


def metrics(values: Mapping[str, float]) -> list[Any]:
    """Metric entities for ``log_batch``, all at one timestamp and step 0."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]
