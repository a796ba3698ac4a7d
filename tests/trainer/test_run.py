"""`python -m trainer.run` end to end on a local Ray: training, checkpoints, MLflow, resume, bad input (worker and driver
loss: test_determinism.py)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch

from trainer import checkpoint as ckpt
from trainer.run import main
from vgg.card import ModelCard, load_model, save_model
from vgg.model import build

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# A thin net A at crop 32 on the tiny ImageNet: 27 training images -> 3 steps of 8 per epoch.
TINY = ["--arch", "A", "--width", "0.125", "--fc-width", "16", "--crop", "32", "--scale-jitter", "32", "40",
        "--batch-size", "8", "--init", "glorot", "--cpus-per-worker", "0.5", "--shuffle-buffer", "16",
        "--max-failures", "2"]


def args(manifest: str, tmp: Path, name: str, *extra: str) -> list[str]:
    """The tiny job's flags with its own storage and tracking store under ``tmp``."""
    return [*TINY, "--data", manifest, "--storage", str(tmp / "runs"), "--name", name,
            "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", *extra]


def test_trains_checkpoints_tracks_and_resumes(prepared_shards, ray_local, tmp_path, capsys):
    assert main(args(prepared_shards, tmp_path, "tiny", "--epochs", "2")) == 0
    out = capsys.readouterr().out
    assert "done: tiny after 2 epochs, 6 steps" in out and "mlflow ui --backend-store-uri sqlite:///" in out

    uri, state = ckpt.find_latest(str(tmp_path / "runs"), "tiny")
    assert state.epoch == 2 and state.step == 6 and state.step_in_epoch == 0
    assert [h["epoch"] for h in state.history] == [1, 2]
    assert all(h["val_images"] == 8 for h in state.history)  # every val image counted once
    assert {p.name for p in Path(uri).iterdir()} >= {"model.pt", "card.json", "optimizer.pt", "train_state.json"}
    model, card = load_model(state.best_checkpoint)
    assert card.arch == "A" and (card.smin, card.smax) == (32, 40) and card.crop == 32 and len(card.classes) == 4
    assert card.info["epoch"] >= 1 and "val_top1" in card.info

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(state.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.arch"] == "A" and params["optim.lr"] == "0.01" and params["optim.momentum"] == "0.9"
    assert params["optim.weight_decay"] == "0.0005" and params["derived.per_worker_batch"] == "8"
    assert "width 0.125" in params["derived.deviations_from_paper"]
    for metric in ("train/loss", "train/top1_err", "train/lr", "perf/images_per_s", "perf/data_wait_pct"):
        assert client.get_metric_history(run.info.run_id, metric), metric
    val = client.get_metric_history(run.info.run_id, "val/top1_err")
    assert [m.step for m in val] == [3, 6]
    assert run.data.tags["verydeep.model_uri"] == state.best_checkpoint
    assert run.data.tags["verydeep.checkpoint_latest"] == uri
    version = client.get_model_version_by_alias("verydeep-A", "best")
    assert version.run_id == run.info.run_id

    # The same command with a larger budget resumes: same MLflow run, epochs continue, nothing redone.
    assert main(args(prepared_shards, tmp_path, "tiny", "--epochs", "3")) == 0
    _, resumed = ckpt.find_latest(str(tmp_path / "runs"), "tiny")
    assert resumed.mlflow_run_id == state.mlflow_run_id
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3] and resumed.step == 9
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/top1_err")] == [3, 6, 9]
    # A complete run is not trained again.
    assert main(args(prepared_shards, tmp_path, "tiny", "--epochs", "3")) == 0
    assert "already complete (3 epochs)" in capsys.readouterr().out


def test_init_from_a_checkpoint_transfers_net_a(prepared_shards, ray_local, tmp_path):
    torch.manual_seed(1)
    net_a = build("A", 4, width=0.125, fc_width=16, crop=32, init="glorot")
    card = ModelCard(arch="A", num_classes=4, crop=32, smin=32, smax=32, mean=(0.0, 0.0, 0.0), width=0.125,
                     fc_width=16)
    save_model(tmp_path / "net-a", net_a, card)
    extra = ("--epochs", "1", "--arch", "B", "--init-from", str(tmp_path / "net-a"), "--lr", "1e-9",
             "--weight-decay", "0")
    assert main(args(prepared_shards, tmp_path, "b-from-a", *extra)) == 0
    _, state = ckpt.find_latest(str(tmp_path / "runs"), "b-from-a")
    model, _ = load_model(state.best_checkpoint)
    # At LR 1e-9 the copied layers stay A's: conv1_1 (features.0) and FC8 (classifier.6).
    torch.testing.assert_close(model.features[0].weight, net_a.features[0].weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.classifier[6].weight, net_a.classifier[6].weight, atol=1e-6, rtol=0)


@pytest.mark.s3
def test_bad_input_is_one_line_and_exit_2(prepared_shards, ray_local, s3_server, tmp_path, capsys):
    def fails(argv: list[str], message: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err

    fails(args(str(tmp_path / "nowhere" / "manifest.json"), tmp_path, "x"), "cannot read manifest")
    (tmp_path / "bad.json").write_text("{")
    fails(args(str(tmp_path / "bad.json"), tmp_path, "x"), "not valid JSON")
    fails([*args(prepared_shards, tmp_path, "x"), "--storage", "s3://no-such-bucket/ckpt"],
          "bucket 'no-such-bucket' does not exist")
    other = build("A", 4, width=0.25, fc_width=16, crop=32)
    save_model(tmp_path / "wide-a", other, ModelCard(arch="A", num_classes=4, crop=32, smin=32, smax=32,
                                                     mean=(0.0, 0.0, 0.0), width=0.25, fc_width=16))
    fails(args(prepared_shards, tmp_path, "x", "--arch", "D", "--init-from", str(tmp_path / "wide-a")),
          "cannot initialise from")
    fails(args(prepared_shards, tmp_path, "x", "--init-from", str(tmp_path / "no-such-checkpoint")),
          "does not exist")
    fails(args(prepared_shards, tmp_path, "x", "--workers", "64", "--batch-size", "64"), "needs 32 CPUs")
    with pytest.raises(SystemExit) as exit_:
        main(args(prepared_shards, tmp_path, "x", "--arch", "Z"))
    assert exit_.value.code == 2 and "invalid choice: 'Z'" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "x").exists()  # nothing was started


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--arch", "--data", "--scale", "--scale-jitter", "--crop", "--epochs", "--batch-size", "--lr",
                 "--momentum", "--weight-decay", "--dropout", "--workers", "--gpu", "--storage", "--name",
                 "--init-from", "--seed", "--smoke", "--tracking-uri", "--experiment", "--micro-batch"):
        assert flag in text, flag


def test_retention_keeps_the_best_checkpoint_through_ties(prepared_shards, ray_local, tmp_path, capsys):
    # An LR too small to change a prediction: every epoch ties the first on validation top-1. The run's best model is
    # the first checkpoint to reach that score, so retention (3 kept) must not delete it for a later, equal one.
    assert main(args(prepared_shards, tmp_path, "ties", "--epochs", "5", "--lr", "1e-12", "--patience", "10")) == 0
    uri, state = ckpt.find_latest(str(tmp_path / "runs"), "ties")
    assert state.epoch == 5 and len({h["val_top1"] for h in state.history}) == 1
    assert state.best_checkpoint.endswith("checkpoint_e001_s00000003")
    assert Path(state.best_checkpoint, "model.pt").exists()
    assert "done: ties after 5 epochs" in capsys.readouterr().out
