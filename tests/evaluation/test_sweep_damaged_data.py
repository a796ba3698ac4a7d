"""The sweep on damaged shards: one line naming the shard, never the clean data's stored posteriors."""

from __future__ import annotations

import mlflow
import pytest

from damage import where  # noqa: F401 (a fixture)
from damage import copy_dataset, flip_image_page, truncate
from evaluation.posteriors import data_id
from evaluation.sweep import main
from pipeline.manifest import load_manifest

pytestmark = pytest.mark.ray  # prepared_shards ingests through Ray


def sweep(model, manifest: str, out) -> list[str]:
    return ["--model", str(model), "--data", manifest, "--scales", "40", "--methods", "dense", "--out", str(out),
            "--no-mlflow", "--batch-size", "4"]


def test_a_damaged_shard_fails_the_sweep_in_one_line_not_its_cache(prepared_shards, untrained_model, tmp_path,
                                                                      capsys, where):
    manifest = copy_dataset(prepared_shards, where)
    out = tmp_path / "out"
    assert main(sweep(untrained_model, manifest, out)) == 0  # clean: computed and stored
    (uri,) = load_manifest(manifest).shard_uris("val")
    clean = data_id(load_manifest(manifest), "val")
    assert data_id(load_manifest(manifest), "val") == clean  # untouched data keeps its id: the store is reused
    flip_image_page(uri)
    assert data_id(load_manifest(manifest), "val") != clean
    capsys.readouterr()
    # The same command again (now tracked): the damaged shard is read (the clean run's posteriors are not taken for
    # it) and fails, and so does the sweep's MLflow run, with the error line as its description.
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [a for a in sweep(untrained_model, manifest, out) if a != "--no-mlflow"]
    assert main([*argv, "--tracking-uri", tracking, "--experiment", "damaged"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: shard {uri} is corrupt (could not verify page integrity, CRC checksum verification "
                       "failed for page_ordinal 0): re-run pipeline.prepare to rewrite it"), err
    client = mlflow.MlflowClient(tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("damaged").experiment_id])
    assert run.info.status == "FAILED" and run.info.end_time >= run.info.start_time
    assert run.data.tags["mlflow.note.content"].startswith("**FAILED**: ShardError: shard ")


def test_a_truncated_shard_stops_the_sweep_before_any_compute(prepared_shards, untrained_model, tmp_path, capsys):
    manifest = copy_dataset(prepared_shards, str(tmp_path / "data"))
    (uri,) = load_manifest(manifest).shard_uris("val")
    truncate(uri)
    assert main(sweep(untrained_model, manifest, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: shard {uri} is not a readable Parquet file ("), err
    assert not (tmp_path / "out").exists()
