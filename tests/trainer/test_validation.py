"""Training's validation and the evaluation sweep's dense rows are one computation: the same net and images give the
same numbers through both real code paths (``trainer.loop.validate`` and ``evaluation.sweep``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluation.config import parse_args as sweep_args
from evaluation.methods import DENSE
from evaluation.sweep import run as sweep
from pipeline.dataset import VAL, read_shards
from pipeline.manifest import load_manifest
from trainer.config import parse_args as train_args
from trainer.distributed import Worker
from trainer.loop import JobInfo, validate
from vgg.card import ModelCard, load_model, save_model
from vgg.model import build

Q = 40


def tiny_model(manifest_path: str, directory: Path) -> Path:
    """A thin net A (crop 32, Glorot init) for the tiny set's classes, saved as a model directory."""
    manifest = load_manifest(manifest_path)
    torch.manual_seed(0)
    net = build("A", manifest.num_classes, width=0.125, fc_width=32, crop=32, init="glorot")
    card = ModelCard(arch="A", num_classes=manifest.num_classes, crop=32, smin=32, smax=48,
                     mean=tuple(float(v) for v in manifest.mean_rgb), width=0.125, fc_width=32,
                     classes=tuple(manifest.wnids))
    return save_model(directory, net.eval(), card)


def validation(model_dir: Path, manifest_path: str, flip: bool) -> dict[str, float]:
    """``trainer.loop.validate`` on one CPU worker, on the val split as Ray Data reads it for training."""
    manifest = load_manifest(manifest_path)
    flags = ["--data", manifest_path, "--arch", "A", "--width", "0.125", "--fc-width", "32", "--crop", "32",
             "--scale-jitter", "32", "48", "--val-q", str(Q), "--decoder", "cpu"] + (["--val-flip"] if flip else [])
    cfg = train_args(flags)
    info = JobInfo(mean=tuple(map(float, manifest.mean_rgb)), eigval=tuple(map(float, manifest.eigval)),
                   eigvec=tuple(tuple(map(float, row)) for row in manifest.eigvec), wnids=tuple(manifest.wnids),
                   steps_per_epoch=1, run_dir=str(model_dir.parent), mlflow_run_id=None, tracking_uri=None)
    model, _ = load_model(model_dir)
    shard = read_shards(manifest.shard_uris(VAL))
    return validate(model, shard, cfg, info, Worker(rank=0, world_size=1, device=torch.device("cpu")))


@pytest.mark.ray
def test_validation_equals_the_sweeps_dense_row(prepared_shards, tmp_path):
    model_dir = tiny_model(prepared_shards, tmp_path / "model")
    result = sweep(sweep_args(["--model", str(model_dir), "--data", prepared_shards, "--scales", str(Q),
                               "--methods", "dense", "--out", str(tmp_path / "out"), "--no-mlflow"]))
    (cell,) = [c for c in result.report.cells if c.method == DENSE and c.q == Q]
    plain, flipped = validation(model_dir, prepared_shards, flip=False), validation(model_dir, prepared_shards, True)
    assert plain["val_images"] == flipped["val_images"] == cell.images == 8
    assert plain["val_top1_err"] == cell.extra["top1_err_noflip"] and plain["val_top5_err"] == cell.extra["top5_err_noflip"]
    assert flipped["val_top1_err"] == cell.top1_err and flipped["val_top5_err"] == cell.top5_err
    print(f"validation top-1 err {plain['val_top1_err']:.4f} (flip {flipped['val_top1_err']:.4f}); sweep dense "
          f"{cell.extra['top1_err_noflip']:.4f} (flip {cell.top1_err:.4f})")
