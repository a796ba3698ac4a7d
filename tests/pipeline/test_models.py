"""The one model source: the run-id rule, runs and checkpoint URIs resolved and fetched, one error for a missing
checkpoint -- as the trainer's ``--init-from`` and the evaluation sweep both see them."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import mlflow
import pytest
import torch

from evaluation.models import load as sweep_load
from pipeline.models import MODEL_URI_TAG, ModelError, fetch, fetched, is_run_id, resolve, run_id_of
from trainer.checkpoint import OPTIMIZER_FILE, load_source
from vgg.card import CARD_FILE, MODEL_FILE, ModelCard, save_model
from vgg.model import build

RUN_ID = uuid.uuid4().hex  # how MLflow's stores make run ids


def model_dir(directory: Path) -> Path:
    """A thin net A's model directory with a checkpoint's optimiser file beside it."""
    torch.manual_seed(0)
    card = ModelCard(arch="A", num_classes=4, crop=32, smin=32, smax=32, mean=(0.0, 0.0, 0.0), width=0.125,
                     fc_width=16)
    save_model(directory, build("A", 4, width=0.125, fc_width=16, crop=32, init="glorot"), card)
    (directory / OPTIMIZER_FILE).write_bytes(b"momentum buffers")
    return directory


@pytest.mark.parametrize("text, ok", [
    (RUN_ID, True),
    ("0123456789abcdef0123456789abcdef", True),
    (RUN_ID.upper(), False),  # MLflow writes lowercase hex
    (RUN_ID[:-1], False),
    (RUN_ID + "0", False),
    ("0123456789abcdef0123456789abcdeg", False),
    ("checkpointe070s00349440", False),  # 16+ letters and digits: a directory name, not a run
    ("", False),
])
def test_the_run_id_rule(text, ok):
    assert is_run_id(text) is ok


def test_run_ids_in_sources(tmp_path, monkeypatch):
    assert run_id_of(f"runs:/{RUN_ID}") == RUN_ID
    assert run_id_of(f"runs:/{RUN_ID}/model") == RUN_ID
    assert run_id_of("runs:/imported-run-7") == "imported-run-7"  # any id MLflow accepts, when written as runs:/
    assert run_id_of(RUN_ID) == RUN_ID
    assert run_id_of("checkpointe070s00349440") is None
    assert run_id_of("s3://bucket/ckpt/checkpoint_e001_s00000003") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / RUN_ID).mkdir()  # a local directory of that name wins
    assert run_id_of(RUN_ID) is None
    assert resolve("some/dir") == "some/dir" and resolve("s3://b/k") == "s3://b/k"  # no tracking server asked


def test_runs_resolve_to_their_model_directory_for_trainer_and_sweep(mlflow_server, tmp_path):
    local = model_dir(tmp_path / "best")
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.create_experiment("models-test")
    run_id = client.create_run(experiment).info.run_id
    client.set_tag(run_id, MODEL_URI_TAG, str(local))
    bare = client.create_run(experiment).info.run_id
    assert is_run_id(run_id)  # the rule holds for what the server makes
    for source in (f"runs:/{run_id}", run_id):
        assert resolve(source, mlflow_server.uri) == str(local)
        card, weights = load_source(source, mlflow_server.uri)  # trainer: --init-from
        loaded = sweep_load(source, mlflow_server.uri)  # evaluation: --model
        assert card == loaded.card and loaded.uri == str(local)
        assert all(torch.equal(weights[k], v) for k, v in loaded.state.items())
    with pytest.raises(ModelError, match=f"^MLflow run {bare} has no verydeep.model_uri tag"):
        resolve(f"runs:/{bare}", mlflow_server.uri)
    with pytest.raises(ModelError, match=f"^cannot read MLflow run {RUN_ID} "):
        resolve(RUN_ID, mlflow_server.uri)


@pytest.mark.s3
def test_a_checkpoint_on_s3_is_fetched_without_its_training_state(s3_server, tmp_path):
    local = model_dir(tmp_path / "ckpt")
    bucket = s3_server.create_bucket()
    for f in local.iterdir():
        s3_server.client.upload_file(str(f), bucket.removeprefix("s3://"), f"run/ckpt/{f.name}")
    uri = f"{bucket}/run/ckpt"
    got = fetch(uri, tmp_path / "copy")
    assert sorted(p.name for p in got.iterdir()) == sorted([CARD_FILE, MODEL_FILE])  # no optimiser state copied
    assert (got / MODEL_FILE).read_bytes() == (local / MODEL_FILE).read_bytes()
    assert fetch(str(local), tmp_path / "unused") == local  # a local directory is used in place
    with fetched(uri) as (resolved, directory):
        assert resolved == uri and (directory / CARD_FILE).exists()
    assert not directory.exists()  # the copy goes with the `with`


@pytest.mark.s3
def test_a_missing_checkpoint_is_one_clear_error_for_trainer_and_sweep(s3_server, tmp_path):
    bucket = s3_server.create_bucket()
    for uri in (str(tmp_path / "no-such-checkpoint"), f"{bucket}/run/no-such-checkpoint",
                "checkpointe070s00349440"):  # the last one read as a run id before
        line = f"model directory {uri} does not exist"
        with pytest.raises(ModelError, match=f"^{re.escape(line)}$"):
            fetch(uri, tmp_path / "dst")
        with pytest.raises(ValueError, match=f"^{re.escape(line)}$"):
            load_source(uri)
        with pytest.raises(ModelError, match=f"^{re.escape(f'model {uri}: {line}')}$"):
            sweep_load(uri)
    weights = model_dir(tmp_path / "m") / MODEL_FILE
    with pytest.raises(ModelError, match=re.escape(f"{weights} is a file, not a model directory")):
        load_source(str(weights))
