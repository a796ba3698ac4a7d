"""`python -m trainer.recipe paper`: the paper's ladder of runs, each from the previous one's weights, rerun-safe."""

from __future__ import annotations

import re

import mlflow
import pytest

from trainer import checkpoint as ckpt
from trainer.config import RECIPES, compose, load_recipe
from trainer.loop import init_from, make_model
from trainer.recipe import main, paper_ladder, rung_flags
from vgg import paper
from vgg.card import ModelCard, save_model
from vgg.model import ARCHS

TABLE3_RECIPES = sorted(p for p in RECIPES.iterdir() if p.suffix in (".yaml", ".py") and "Table 3" in p.read_text())


def test_paper_ladder_scales_follow_the_crop():
    full = paper_ladder("E", 224)
    assert [r.name for r in full] == ["A-S256", "E-S256", "E-S384", "E-S256-512"]
    assert [r.init_layers for r in full] == [None, "transfer", "all", "all"]
    assert full[0].fields == {"arch": "A", "scale": 256, "lr": 1e-2}
    assert full[2].fields == {"arch": "E", "scale": 384, "lr": 1e-3}
    assert full[3].fields["scale"] == (256, 512)
    assert [r.name for r in paper_ladder("A", 32)] == ["A-S256", "A-S384", "A-S256-512"]
    assert paper_ladder("D", 32)[3].fields["scale"] == (37, 73)


@pytest.mark.parametrize("argv", [["paper", "--arch", "Z"], ["ladder"], ["paper", "--scale", "0"]])
def test_bad_flags_are_one_error_line(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as e:  # the parser's refusal
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err


def test_paper_help_says_what_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["paper", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    required = text[text.index("\nrequired:"):]
    assert "--data MANIFEST" in required.split("\n\n")[0] and "unless --smoke" in required
    assert "(default: E)" in " ".join(text.split())
    for refused in ("--scale", "--lr", "--init-from", "--config"):
        assert refused in text[text.index("refused"):], refused


def test_a_lrn_ladder_trains_a_lrn_from_random_init_first():
    steps = paper_ladder("A-LRN", 224)
    assert [s.name for s in steps] == ["A-LRN-S256", "A-LRN-S384", "A-LRN-S256-512"]
    assert [s.fields["arch"] for s in steps] == ["A-LRN"] * 3 and steps[0].init_layers is None
    assert ("A-LRN", paper.TrainScale(256, 256)) in paper.TABLE3  # Table 3's A-LRN row is the first rung


@pytest.mark.parametrize("arch", ARCHS)
def test_each_rungs_weights_load_into_the_next_before_any_training(arch, tmp_path):
    # The ladder's own plan (rung fields, as trainer.recipe composes them) at smoke size; each rung's net, freshly
    # built, goes through the trainer's own init_from (strict) into the next: layer names and shapes are what count.
    flags = {"smoke": True, "data": "manifest.json", "width": 0.125, "fc_width": 16}
    previous, built = None, []
    for step in paper_ladder(arch, 32):
        cfg = compose({}, rung_flags(flags, f"paper-{arch}", step, previous))
        model = make_model(cfg, num_classes=10)
        if step.init_layers is not None:
            assert init_from(model, cfg, None).startswith(f"{step.init_layers} weights from VGG-")
        s = cfg.data.train_scale
        previous = str(save_model(tmp_path / step.name, model, ModelCard(
            arch=cfg.model.arch, num_classes=10, crop=cfg.model.crop, smin=s.smin, smax=s.smax, mean=(0.0, 0.0, 0.0),
            width=cfg.model.width, fc_width=cfg.model.fc_width)))
        built.append((cfg.model.arch, cfg.optim.lr, cfg.deviations_from_paper()))
    assert built[-1][0] == arch and built[0][0] == ("A" if arch not in ("A", "A-LRN") else arch)
    # Each rung has the paper's LR for how it starts; what differs from the paper is the smoke size only.
    assert [lr for _, lr, _ in built] == [r.lr for r in paper.ladder(arch)]
    assert all(not any("LR" in d or "random init" in d for d in devs) for _, _, devs in built)


@pytest.mark.parametrize("path", TABLE3_RECIPES, ids=lambda p: p.name)
def test_table_3_recipes_are_rungs_of_the_ladder(path):
    cfg = compose(load_recipe(str(path)), {"data": "manifest.json"})
    rung = paper.rung_for(cfg.model.arch, cfg.data.train_scale)
    assert rung is not None, f"{path.name} trains no rung of the paper's ladder"
    assert cfg.optim.lr == rung.lr
    head = path.read_text()[:1500]
    top1, top5 = paper.TABLE3[(rung.arch, rung.scale)]
    assert f"{top1} % top-1 / {top5} % top-5" in head
    source = re.search(r"--init-from runs:/<run id of (\w+)>", head)
    if rung.init is None:
        assert source is None and cfg.model.init_layers == "auto"
    else:  # names the recipe of the rung before, and copies what the ladder copies
        rungs = paper.ladder(rung.arch)
        before = rungs[rungs.index(rung) - 1]
        assert source is not None and source.group(1) == before.name.lower().replace("-s", "_").replace("-", "_")
        assert cfg.model.init_layers == rung.init


@pytest.mark.parametrize("flag", [["--lr", "0.1"], ["--scale", "300"], ["--init-from", "runs:/x"], ["--config", "a_256"]])
def test_ladder_refuses_what_it_sets_per_rung(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["paper", *flag])
    assert exit_.value.code == 2
    assert f"{flag[0]} of trainer.run do not apply" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_ladder_runs_each_rung_from_the_last_and_skips_done_rungs(prepared_shards, ray_local, tmp_path, capsys):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["paper", "--arch", "B", "--data", prepared_shards, "--storage", str(tmp_path / "runs"),
            "--tracking-uri", tracking, "--width", "0.125", "--fc-width", "16", "--crop", "32", "--epochs", "1",
            "--batch-size", "8", "--init", "glorot", "--cpus-per-worker", "0.5", "--shuffle-buffer", "16"]
    assert main(argv) == 0
    names = ["paper-B.A-S256", "paper-B.B-S256", "paper-B.B-S384", "paper-B.B-S256-512"]
    states = [ckpt.find_latest(str(tmp_path / "runs"), n)[1] for n in names]
    assert all(s.epoch == 1 for s in states)

    client = mlflow.MlflowClient(tracking_uri=tracking)
    runs = [client.get_run(s.mlflow_run_id) for s in states]
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1 and client.get_run(parents.pop()).data.tags["verydeep.ladder"] == "paper-B"
    p = [r.data.params for r in runs]
    assert [x["model.arch"] for x in p] == ["A", "B", "B", "B"]
    assert p[0]["model.init_from"] == "none"
    for i in (1, 2, 3):  # each rung starts from the previous rung's best checkpoint
        assert p[i]["model.init_from"] == states[i - 1].best_checkpoint
    assert [x["model.init_layers"] for x in p[1:]] == ["transfer", "all", "all"]
    assert [x["optim.lr"] for x in p] == ["0.01", "0.01", "0.001", "0.001"]
    assert [x["derived.train_scale"] for x in p] == ["37", "37", "55", "[37;73]"]  # crop 32: the paper's S * 32/224

    capsys.readouterr()
    assert main(argv) == 0  # rerun: nothing is trained again
    out = capsys.readouterr().out
    assert out.count("already complete") == 4
    assert [ckpt.find_latest(str(tmp_path / "runs"), n)[1].step for n in names] == [s.step for s in states]


@pytest.mark.ray
@pytest.mark.slow
def test_a_failing_rung_closes_the_ladders_parent_run_failed_with_the_reason(ray_local, tmp_path, capsys):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["paper", "--arch", "A", "--data", str(tmp_path / "missing" / "manifest.json"), "--storage",
            str(tmp_path / "runs"), "--tracking-uri", tracking]
    assert main(argv) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert err.startswith("error: rung A-S256: cannot read manifest"), err
    client = mlflow.MlflowClient(tracking_uri=tracking)
    (parent,) = client.search_runs([client.get_experiment_by_name("verydeep").experiment_id],
                                   filter_string="tags.`verydeep.ladder` = 'paper-A'")
    assert parent.info.status == "FAILED"  # was left RUNNING
    assert parent.data.tags["verydeep.failure"] == err.removeprefix("error: ")
