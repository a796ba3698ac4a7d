"""The training config: one flag per field, the paper's defaults, one-line errors, recipes, params, derived values."""

import dataclasses
import json

import pytest
from cli_refusal import refused
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

import vgg
from pipeline.cli import MAX_PARAM_VALUE, flag
from trainer.config import (
    LEAVES,
    RECIPES,
    SECTIONS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    build_parser,
    compose,
    from_dict,
    load_recipe,
    parse_args,
    to_dict,
    to_params,
)
from vgg.protocol import TrainScale

DATA = ["--data", "s3://bucket/ilsvrc2012/manifest.json"]
RECIPE_FILES = sorted(p for p in RECIPES.iterdir() if p.suffix in (".yaml", ".py"))


def config(**fields) -> TrainConfig:
    """A config with a data URI and the given fields (by name) changed."""
    return compose(explicit={"data": "manifest.json", **fields})


def error_line(capsys, argv) -> str:
    """The stderr of a command line that must fail like argparse does: exit code 2, one line."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


# ---- flags -----------------------------------------------------------------------------------------------------------


def test_every_field_has_a_flag_with_help_and_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    actions = {a.dest: a for a in build_parser()._actions}
    assert set(actions) == set(LEAVES) | {"help", "config"}
    for name, leaf in LEAVES.items():
        assert leaf.meta("help").strip(), f"{leaf.section}.{name} has no help text"
        assert flag(name) in text
        assert leaf.meta("help") in actions[name].help
        # A default is shown unless there is none to show (the help then says what none means).
        assert ("(default: " in actions[name].help) == (leaf.default not in (None, (), "")), name


def test_field_names_are_unique_across_sections():
    names = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)) == len(LEAVES)


def test_issue_flags_exist():
    flags = {o for a in build_parser()._actions for o in a.option_strings}
    required = ["--arch", "--data", "--scale", "--scale-jitter", "--crop", "--epochs", "--batch-size", "--lr",
                "--momentum", "--weight-decay", "--dropout", "--workers", "--gpu", "--storage", "--name",
                "--init-from", "--seed", "--smoke", "--tracking-uri", "--experiment", "--micro-batch", "--config"]
    assert set(required) <= flags


def test_flags_of_every_kind_parse():
    cfg = parse_args(DATA + ["--arch", "D", "--width", "0.5", "--no-flip", "--scale", "256,512",
                             "--init-from", "runs:/abc123", "--micro-batch", "64", "--gpu", "false",
                             "--cpus-per-worker", "0.5", "--val-q", "none"])
    assert (cfg.model.arch, cfg.model.width, cfg.data.flip) == ("D", 0.5, False)
    assert cfg.data.scale == TrainScale(256, 512)
    assert cfg.model.init_from == "runs:/abc123" and cfg.optim.micro_batch == 64
    assert cfg.cluster.gpu == "false" and cfg.cluster.cpus_per_worker == 0.5 and cfg.data.val_q is None


# ---- defaults --------------------------------------------------------------------------------------------------------


def test_defaults_are_the_papers():
    cfg = parse_args(DATA)
    o, s, m, d = cfg.optim, cfg.schedule, cfg.model, cfg.data
    assert (o.batch_size, o.momentum, o.weight_decay, o.lr) == (256, 0.9, 5e-4, 1e-2)
    assert (s.epochs, s.max_decays, s.lr_factor) == (74, 3, 0.1)
    assert (m.dropout, m.crop, m.width, m.fc_width, m.init, m.init_std) == (0.5, 224, 1.0, 4096, "paper", 0.01)
    assert d.train_scale.smin == d.train_scale.smax == 256 and d.q == 256
    assert (d.flip, d.colour_shift) == (True, 0.1)
    assert not o.scale_lr and o.effective_lr == 1e-2 and o.warmup == 0
    assert (cfg.cluster.workers, cfg.run.seed, cfg.run.experiment, cfg.run.smoke) == (1, 0, "verydeep", False)
    assert parse_args(DATA + ["--arch", "A"]).deviations_from_paper() == []


def test_config_is_frozen():
    cfg = config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 0.1  # type: ignore[misc]


# ---- errors ----------------------------------------------------------------------------------------------------------


# ---- the training scale S: one field, a range (a fixed S is a range of one) ------------------------------------------


@pytest.mark.parametrize("argv, scale", [
    ([], (256, 256)), (["--scale", "384"], (384, 384)), (["--scale", "256,512"], (256, 512)),
    (["--scale", "256", "512"], (256, 512)), (["--scale-jitter", "256", "512"], (256, 512)),  # the older spelling
    (["--scale", "256,512", "--scale", "384"], (384, 384)),  # the last one given wins, as for every flag
])
def test_scale_is_one_flag_for_fixed_and_jittered_s(argv, scale):
    assert parse_args(DATA + argv).data.scale == TrainScale(*scale)


@pytest.mark.parametrize("value", ["0", "512,256", "256,384,512", "abc", "256.5"])
def test_bad_scales_give_one_error_line(capsys, value):
    err = error_line(capsys, DATA + ["--scale", value])
    assert err.startswith(f"error: bad scale {value}: expected S or SMIN,SMAX"), err


def test_configs_stored_with_the_two_old_scale_fields_still_read():
    old = to_dict(config())
    del old["data"]["scale"]
    for before, now in [({"scale": None, "scale_jitter": [256, 512]}, (256, 512)),
                        ({"scale_jitter": [256, 512], "scale": None}, (256, 512)),
                        ({"scale": 384, "scale_jitter": None}, (384, 384)),
                        ({"scale": None, "scale_jitter": None}, (256, 256))]:
        cfg = from_dict({**old, "data": {**old["data"], **before}})
        assert cfg.data.scale == TrainScale(*now) and cfg == config(scale=list(now))
    assert compose(recipe={"data.scale_jitter": [256, 512]}, explicit={"data": "m"}).data.q == 384


@pytest.mark.parametrize("argv, words", [
    (["--crop", "100"], ["crop", "100", "multiple of 32"]),
    (["--batch-size", "250", "--workers", "4"], ["batch_size", "250", "workers=4"]),
    (["--arch", "Z"], ["--arch", "'Z'", "A-LRN"]),
    (["--workers", "2", "--micro-batch", "48"], ["micro_batch", "48", "128"]),
    (["--scale", "200"], ["scale", "200", "crop=224"]),
    (["--scale-jitter", "512", "256"], ["scale", "512,256", "SMIN <= SMAX"]),
    (["--scale", "32,512"], ["scale", "32,512", "crop=224"]),
    (["--val-q", "128"], ["val_q", "128", "crop=224"]),
    (["--dropout", "1.0"], ["dropout", "1.0", "[0, 1)"]),
    (["--lr", "abc"], ["--lr", "'abc'"]),
    (["--epochs", "0"], ["epochs", "0"]),
    (["--patience", "0"], ["patience", "0"]),
    (["--lr-factor", "10"], ["lr_factor", "10.0", "(0, 1)"]),
    (["--storage", ""], ["storage"]),
    (["--no-such-flag"], ["unrecognized", "--no-such-flag"]),
    (["--config", "no_such_recipe"], ["no_such_recipe", "a_256"]),
])
def test_bad_values_give_one_error_line(capsys, argv, words):
    err = error_line(capsys, DATA + argv)
    for word in words:
        assert word in err, err


FLOAT_FIELDS = sorted(name for name, leaf in LEAVES.items() if leaf.base is float)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_every_float_field_refuses_nan_and_infinity(capsys, name, value):
    err = error_line(capsys, DATA + [f"{flag(name)}={value}"])
    assert err.startswith(f"error: bad {name} {value}: expected a finite number"), err
    with pytest.raises(ValueError, match=f"bad {name} {value}: expected a finite number"):
        compose(recipe={name: float(value)}, explicit={"data": "m"})  # a YAML recipe's .nan / .inf


def test_run_refuses_an_infinite_width_before_starting_anything(tmp_path):
    line = refused("trainer.run", ["--smoke", "--width", "inf", "--storage", str(tmp_path / "runs"),
                                   "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path)
    assert line.startswith("error: bad width inf: expected a finite number"), line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_data_is_required_unless_smoke(capsys):
    assert "data" in error_line(capsys, [])
    assert parse_args(["--smoke"]).data.data is None


@pytest.mark.parametrize("cls, kwargs", [
    (ModelConfig, {"arch": "F"}), (ModelConfig, {"crop": 100}), (ModelConfig, {"width": "1"}),
    (ModelConfig, {"fc_width": 1.5}), (DataConfig, {"flip": 1}), (DataConfig, {"scale": (512, 256)}),
    (OptimConfig, {"momentum": 1.0}), (OptimConfig, {"batch_size": True}),
])
def test_sections_reject_bad_values_in_one_line_naming_the_field(cls, kwargs):
    with pytest.raises(ValueError) as e:
        cls(**kwargs)
    (name,) = kwargs
    assert "\n" not in str(e.value) and name in str(e.value) and "expected" in str(e.value)


# ---- recipes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.name)
def test_recipes_load_and_say_how_to_run(path):
    head = path.read_text()[:1500]
    assert "python -m trainer.run --config" in head
    source = ["--init-from", "runs:/0123abcd"] if "--init-from" in head else []
    cfg = parse_args(["--config", str(path)] + source + DATA)
    assert cfg.model.arch in vgg.ARCHS
    if "smoke" in path.stem or "demo" in path.stem:  # scaled down: it says so, and MLflow records how
        assert "Reproduces no table row" in head and (cfg.deviations_from_paper() or cfg.run.smoke)
    else:  # a paper recipe names its table row and, given its source run, is the paper's
        assert "Table 3" in head and cfg.deviations_from_paper() == []
    smoke = parse_args(["--config", str(path), "--smoke"])
    assert smoke.run.smoke and smoke.model.crop == 32 and smoke.model.arch == cfg.model.arch


def test_a_256_is_table_3_row_1():
    cfg = parse_args(["--config", "a_256"] + DATA)
    assert cfg.model.arch == "A" and cfg.data.q == 256 and cfg.deviations_from_paper() == []
    assert cfg.run_name == "A-S256"


def test_fine_tuning_recipes_use_the_papers_lr():
    cfg = parse_args(["--config", "d_384", "--init-from", "runs:/d256"] + DATA)
    assert cfg.optim.lr == 1e-3 and cfg.model.init_layers_for("D") == "all"
    assert cfg.deviations_from_paper() == []
    jitter = parse_args(["--config", "d_256_512", "--init-from", "runs:/d384"] + DATA)
    assert jitter.data.q == 384 and jitter.deviations_from_paper() == []


def test_flags_override_recipes():
    cfg = parse_args(["--config", "a_256", "--arch", "B", "--lr", "0.05", "--scale-jitter", "256", "512"] + DATA)
    assert cfg.model.arch == "B" and cfg.optim.lr == 0.05
    assert cfg.data.scale == TrainScale(256, 512)
    fixed = parse_args(["--config", "d_256_512", "--scale", "384"] + DATA)
    assert fixed.data.scale == TrainScale(384, 384)


def test_yaml_recipe_forms(tmp_path):
    path = tmp_path / "mine.yaml"
    # Nested, flat and dotted keys; YAML reads 1e-2 as a string.
    path.write_text("arch: C\noptim:\n  lr: 1e-2\n  batch_size: 512\nrun.seed: 7\nval_q: none\n")
    cfg = parse_args(["--config", str(path), "--workers", "2"] + DATA)
    assert (cfg.model.arch, cfg.optim.lr, cfg.optim.batch_size, cfg.run.seed) == ("C", 0.01, 512, 7)
    assert cfg.data.val_q is None
    path.write_text("optim:\n  arch: C\n")
    with pytest.raises(ValueError, match="unknown field 'arch' in section optim"):
        load_recipe(str(path))


def test_python_recipe_gets_the_smoke_switch(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("def get_config(smoke=False):\n    return {'model': {'arch': 'B' if smoke else 'E'}}\n")
    assert parse_args(["--config", str(path)] + DATA).model.arch == "E"
    assert parse_args(["--config", str(path), "--smoke"]).model.arch == "B"
    path.write_text("from trainer.config import compose\n"
                    "def get_config():\n    return compose(explicit={'arch': 'D', 'lr': 0.02, 'smoke': True})\n")
    cfg = parse_args(["--config", str(path), "--lr", "0.03"])
    assert (cfg.model.arch, cfg.optim.lr, cfg.run.smoke) == ("D", 0.03, True)


def test_smoke_preset_shrinks_and_flags_still_win():
    cfg = parse_args(["--smoke", "--arch", "D"])
    assert (cfg.model.arch, cfg.model.width, cfg.model.fc_width, cfg.model.crop) == ("D", 0.125, 128, 32)
    assert cfg.data.train_scale.smin == 37 and cfg.data.q == 37  # 32 * 256 / 224
    assert (cfg.schedule.epochs, cfg.optim.batch_size, cfg.data.max_train_images) == (2, 32, 512)
    assert cfg.run_name == "D-S37-smoke"
    given = parse_args(["--smoke", "--epochs", "3", "--crop", "64", "--width", "0.25"])
    assert (given.schedule.epochs, given.model.crop, given.model.width) == (3, 64, 0.25)
    assert given.data.train_scale.smin == 73  # the preset's S follows the crop given
    jittered = parse_args(["--config", "d_256_512", "--smoke"])
    assert jittered.data.scale == TrainScale(37, 73) and jittered.data.q == 55


# ---- dicts and params ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [{}, {"scale": (256, 512), "arch": "E", "init_from": "runs:/x"},
                                    {"smoke": True, "micro_batch": 16, "tracking_uri": "http://mlflow:5000"}])
def test_to_dict_from_dict_round_trip_through_json(fields):
    cfg = config(**fields)
    stored = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(stored) == cfg
    assert set(stored) == set(SECTIONS) and sum(map(len, stored.values())) == len(LEAVES)


def test_from_dict_rejects_unknown_keys_and_fills_missing():
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        from_dict({"data": {"data": "manifest.json", "colour": 0.1}})
    assert from_dict({"data": {"data": "manifest.json"}}) == config()


def test_to_params_covers_every_leaf_within_mlflow_limits():
    cfg = config(storage="s3://bucket/" + "x" * 2000, width=0.25, batch_size=128)
    params = to_params(cfg)
    leaves = {f"{leaf.section}.{name}" for name, leaf in LEAVES.items()}
    assert leaves <= set(params)
    assert {k for k in params if k not in leaves} == {k for k in params if k.startswith("derived.")}
    assert all(isinstance(v, str) and len(v) <= MAX_PARAM_VALUE for v in params.values())
    assert MAX_PARAM_VALUE <= MAX_PARAM_VAL_LENGTH and all(len(k) <= MAX_ENTITY_KEY_LENGTH for k in params)
    assert params["run.storage"].endswith("...")
    assert params["optim.batch_size"] == "128" and params["data.scale"] == "256" and params["data.val_q"] == "none"
    assert to_params(config(scale="256,512"))["data.scale"] == "256,512"  # as the flag takes it
    assert "batch 128 instead of 256" in params["derived.deviations_from_paper"]


# ---- derived quantities ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch, workers, micro, per_worker, accumulation", [
    (256, 1, None, 256, 1), (256, 4, None, 64, 1), (256, 4, 16, 64, 4), (512, 8, 32, 64, 2), (256, 256, 1, 1, 1),
])
def test_batch_split(batch, workers, micro, per_worker, accumulation):
    cfg = config(batch_size=batch, workers=workers, micro_batch=micro)
    assert cfg.per_worker_batch == per_worker and cfg.accumulation_steps == accumulation
    assert cfg.micro_batch * cfg.accumulation_steps * workers == batch


@pytest.mark.parametrize("fields, q", [
    ({}, 256), ({"scale": 384}, 384), ({"scale": (256, 512)}, 384),
    ({"scale": (256, 512), "val_q": 256}, 256),
])
def test_validation_q_follows_section_4_1(fields, q):
    assert config(**fields).data.q == q


@pytest.mark.parametrize("fields, lr, warmup", [
    ({}, 0.01, 0), ({"batch_size": 1024}, 0.01, 0), ({"batch_size": 1024, "scale_lr": True}, 0.04, 5),
    ({"batch_size": 128, "scale_lr": True}, 0.01, 0),
    ({"batch_size": 1024, "scale_lr": True, "warmup_epochs": 2}, 0.04, 2),
])
def test_effective_lr_and_warmup(fields, lr, warmup):
    optim = config(**fields).optim
    assert optim.effective_lr == pytest.approx(lr) and optim.warmup == warmup
    assert optim.warmup_steps(100) == warmup * 100


def test_deviations_from_paper():
    cfg = config(arch="A", batch_size=128, width=0.25, init="glorot", scale_lr=True, colour_shift=0.0)
    assert cfg.deviations_from_paper() == ["width 0.25", "Glorot init", "no colour shift", "batch 128 instead of 256"]
    scaled = config(arch="A", batch_size=1024, scale_lr=True).deviations_from_paper()
    assert scaled == ["batch 1024 instead of 256", "linear LR scaling: LR 0.04 for batch 1024", "5 warm-up epochs"]
    assert "VGG-D from random N(0, std^2) init (the paper starts it from net A's layers)" in \
        config(arch="D").deviations_from_paper()
    assert config(arch="D", init_from="runs:/a").deviations_from_paper() == []
    assert config(arch="A", lr=1e-3).deviations_from_paper() == ["LR 0.001 instead of 0.01"]
    # Fine-tuning all weights from a trained net starts at 1e-3 in the paper (S=384 from S=256).
    assert config(arch="D", init_from="runs:/d256", init_layers="all").deviations_from_paper() == [
        "LR 0.01 instead of 0.001"]


def test_init_layers_resolve_from_the_source_arch():
    assert config(arch="D").model.init_layers_for("A") == "transfer"
    assert config(arch="D").model.init_layers_for("D") == "all"
    assert config(arch="D", init_layers="transfer").model.init_layers_for("D") == "transfer"
