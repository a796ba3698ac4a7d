"""`python -m trainer.recipe paper`: the paper's ladder of runs, each from the previous one's weights, rerun-safe."""

from __future__ import annotations

import mlflow
import pytest

from trainer import checkpoint as ckpt
from trainer.recipe import main, paper_ladder

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_paper_ladder_scales_follow_the_crop():
    full = paper_ladder("E", 224)
    assert [r.name for r in full] == ["A-S256", "E-S256", "E-S384", "E-S256-512"]
    assert [r.init_layers for r in full] == [None, "transfer", "all", "all"]
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
