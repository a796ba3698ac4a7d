"""Fine-tuning from a checkpoint of another class count: every layer but FC8 copied, FC8 fresh, convs optionally
frozen; recorded in MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
import torch.nn.functional as F

from trainer import checkpoint as ckpt
from trainer.config import compose
from trainer.loop import freeze_convs, init_from, make_model
from trainer.run import main
from vgg.card import ModelCard, load_model, save_model
from vgg.model import build, init_all_but_last

THIN = dict(width=0.125, fc_width=16, crop=32)


def _source(tmp: Path, classes: int = 10) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(5)
    net = build("A", classes, init="glorot", **THIN)
    card = ModelCard(arch="A", num_classes=classes, crop=32, smin=32, smax=32, mean=(0.0, 0.0, 0.0), width=0.125,
                     fc_width=16)
    return save_model(tmp / f"a-{classes}", net, card), net


def test_a_10_class_checkpoint_initialises_a_5_class_net_but_fc8(tmp_path):
    directory, source = _source(tmp_path)
    cfg = compose(explicit={"data": "manifest.json", "arch": "A", "width": 0.125, "fc_width": 16, "crop": 32,
                            "init": "glorot", "init_from": str(directory)})
    model = make_model(cfg, 5)
    fresh_fc8 = model.classifier[6].weight.clone()
    done = init_from(model, cfg, None)
    assert "FC8 re-initialised for 5 classes (the source has 10)" in done
    own, src = model.state_dict(), source.state_dict()
    for k, v in own.items():
        if k.startswith("classifier.6."):
            assert v.shape[0] == 5
        else:
            torch.testing.assert_close(v, src[k], rtol=0, atol=0)
    torch.testing.assert_close(model.classifier[6].weight, fresh_fc8, rtol=0, atol=0)  # its own random init


def test_layers_that_do_not_fit_are_one_error_line():
    with pytest.raises(ValueError, match=r"features\.0\.weight does not fit"):
        init_all_but_last(build("A", 5, width=0.25, fc_width=16, crop=32), build("A", 10, **THIN))


def test_frozen_convs_stay_put_while_the_fc_layers_learn():
    torch.manual_seed(0)
    net = build("A", 5, init="glorot", **THIN)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    freeze_convs(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        loss = F.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("features."))
    assert all(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("classifier."))


def test_freezing_needs_an_init_source():
    with pytest.raises(ValueError, match="freeze_convs"):
        compose(explicit={"data": "manifest.json", "freeze_convs": True})


@pytest.mark.ray
@pytest.mark.slow
def test_fine_tuning_job_records_the_fresh_fc8_and_keeps_frozen_convs(prepared_shards, ray_local, tmp_path):
    directory, source = _source(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--arch", "A", "--width", "0.125", "--fc-width", "16", "--crop", "32", "--scale", "32,40",
            "--batch-size", "8", "--cpus-per-worker", "0.5", "--shuffle-buffer", "16", "--epochs", "1",
            "--data", prepared_shards, "--storage", str(tmp_path / "runs"), "--name", "ft", "--tracking-uri",
            tracking, "--init-from", str(directory), "--freeze-convs"]
    assert main(argv) == 0
    _, state = ckpt.find_latest(str(tmp_path / "runs"), "ft")
    model, card = load_model(state.best_checkpoint)
    assert card.num_classes == 4 and model.classifier[6].weight.shape[0] == 4
    for k, v in source.state_dict().items():
        if k.startswith("features."):
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    run = mlflow.MlflowClient(tracking).get_run(state.mlflow_run_id)
    assert "FC8 re-initialised for 4 classes (the source has 10)" in run.data.tags["verydeep.init"]
    assert run.data.params["model.freeze_convs"] == "True"


def test_a_source_of_other_classes_gets_a_fresh_fc8_even_at_the_same_count(tmp_path):
    torch.manual_seed(5)
    net = build("A", 5, init="glorot", **THIN)
    card = ModelCard(arch="A", num_classes=5, crop=32, smin=32, smax=32, mean=(0.0, 0.0, 0.0), width=0.125,
                     fc_width=16, classes=("d0", "d1", "d2", "d3", "d4"))
    directory = save_model(tmp_path / "a-5", net, card)
    cfg = compose(explicit={"data": "manifest.json", "arch": "A", "width": 0.125, "fc_width": 16, "crop": 32,
                            "init": "glorot", "init_from": str(directory)})
    other = make_model(cfg, 5)
    done = init_from(other, cfg, None, ("d5", "d6", "d7", "d8", "d9"))
    assert "FC8 re-initialised for 5 classes (the source has 5 other classes)" in done
    assert not torch.equal(other.classifier[6].weight, net.classifier[6].weight)
    same = make_model(cfg, 5)
    assert init_from(same, cfg, None, card.classes).startswith("all weights from")  # the ladder's case: all of it
    torch.testing.assert_close(same.classifier[6].weight, net.classifier[6].weight, rtol=0, atol=0)
