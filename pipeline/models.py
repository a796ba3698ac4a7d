"""Where trained nets are stored and how they are fetched: the one model source of ``--init-from`` and the sweep.

A model directory holds ``model.pt`` and ``card.json`` (``vgg.card``); a training checkpoint is a model directory with
more files beside them. A source names one: a local path or ``s3://`` URI as it is, or an MLflow run --
``runs:/<run id>`` or a bare run id -- which points at its best model directory through the run tag
``verydeep.model_uri`` (set by ``trainer.run``).

A bare run id is 32 lowercase hex digits, the only shape MLflow's tracking stores (file and SQL alike) give a run
(``uuid.uuid4().hex``). A looser rule, such as any 16 or more letters and digits, reads a mistyped directory name
(``checkpointe070s00349440``) as a run id and answers with an MLflow error about a run instead of a missing
directory. A run id of another shape (imported runs) is still reachable as ``runs:/<id>``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import storage
from vgg.card import CARD_FILE, MODEL_FILE

MODEL_URI_TAG = "verydeep.model_uri"  # a training run's best model directory (read by `--init-from` and the sweep)
RUNS_SCHEME = "runs:/"
RUN_ID_LENGTH = 32
_HEX = frozenset("0123456789abcdef")


class ModelError(ValueError):
    """A model source that cannot be used; the message is one line."""


def is_run_id(text: str) -> bool:
    """True for an MLflow run id as MLflow makes them: 32 lowercase hex digits."""
    return len(text) == RUN_ID_LENGTH and set(text) <= _HEX


def run_id_of(source: str) -> str | None:
    """The MLflow run id in ``runs:/<id>[/...]``, or a bare run id that is no local path; else None."""
    if source.startswith(RUNS_SCHEME):
        return source[len(RUNS_SCHEME):].strip("/").split("/")[0] or None
    if is_run_id(source) and not Path(source).exists():
        return source
    return None


def resolve(source: str, tracking_uri: str | None = None) -> str:
    """The model directory URI of a source: a path or URI as it is; an MLflow run through its model URI tag."""
    run_id = run_id_of(source)
    if run_id is None:
        return source
    import mlflow  # only for run sources: a path needs no tracking client

    try:
        run = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except Exception as e:  # MlflowException for an unknown id, connection errors for an unreachable server
        raise ModelError(f"cannot read MLflow run {run_id} ({' '.join(str(e).split())[:200]})") from None
    uri = run.data.tags.get(MODEL_URI_TAG)
    if not uri:
        raise ModelError(f"MLflow run {run_id} has no {MODEL_URI_TAG} tag (not a verydeep training run)")
    return uri


def check_directory(uri: str) -> None:
    """Refuse, in one line, a URI that names one of a model directory's files instead of the directory."""
    if storage.is_local(uri):
        is_file = Path(uri.removeprefix("file://")).is_file()
    else:  # object stores have no directories to ask: go by the name
        is_file = uri.rstrip("/").rsplit("/", 1)[-1] in (MODEL_FILE, CARD_FILE)
    if is_file:
        parent = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else "."
        raise ModelError(f"{uri} is a file, not a model directory: pass the directory that holds {MODEL_FILE} and "
                         f"{CARD_FILE} (e.g. {parent})")


def fetch(uri: str, dst: str | os.PathLike, endpoint: str | None = None) -> Path:
    """A local directory holding the model directory's two files: a local one in place, a remote one copied to
    ``dst`` (a checkpoint's optimiser and train state stay where they are)."""
    check_directory(uri)
    if storage.is_local(uri):
        local = Path(uri.removeprefix("file://"))
        if not local.is_dir():
            raise ModelError(f"model directory {uri} does not exist")
        return local
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        if not storage.exists(storage.join(uri, CARD_FILE), endpoint):  # an object store's "directory" is its files
            raise ModelError(f"model directory {uri} does not exist")
        for name in (CARD_FILE, MODEL_FILE):
            (dst / name).write_bytes(storage.read_bytes(storage.join(uri, name), endpoint))
    except storage.StorageError as e:
        raise ModelError(f"cannot fetch {uri}: {e}") from None
    return dst


@contextmanager
def fetched(source: str, tracking_uri: str | None = None, endpoint: str | None = None) -> Iterator[tuple[str, Path]]:
    """(model directory URI, local directory with its files) of a source, for the duration of the ``with``."""
    uri = resolve(source, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="verydeep-model-") as tmp:
        yield uri, fetch(uri, tmp, endpoint)
