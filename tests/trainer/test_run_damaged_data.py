"""`python -m trainer.run` on damaged shards: one line naming the shard, before any MLflow run or cluster work."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from damage import break_footer, copy_dataset, flip_image_page, truncate
from pipeline import storage
from pipeline.manifest import load_manifest
from trainer.run import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = ["--arch", "A", "--width", "0.125", "--fc-width", "16", "--crop", "32", "--scale-jitter", "32", "40",
        "--batch-size", "8", "--init", "glorot", "--cpus-per-worker", "0.5", "--epochs", "1"]


def args(manifest: str, tmp: Path) -> list[str]:
    return [*TINY, "--data", manifest, "--storage", str(tmp / "runs"), "--name", "damaged",
            "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"]


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("damage", [truncate, break_footer])
def test_an_unreadable_shard_stops_the_job_before_it_starts(prepared_shards, ray_local, s3_server, tmp_path, capsys,
                                                             where, damage):
    dst = str(tmp_path / "data") if where == "local" else storage.join(s3_server.create_bucket(), "data")
    manifest = copy_dataset(prepared_shards, dst)
    uri = load_manifest(manifest).shard_uris("train")[0]
    damage(uri)
    assert main(args(manifest, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: shard {uri} is not a readable Parquet file (") and "\n" not in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs" / "damaged").exists()


@pytest.mark.parametrize("cache_mb", ["64", "0"])  # read into the driver's cache first, or streamed to the worker
def test_a_damaged_data_page_fails_training_in_one_line_naming_the_shard(prepared_shards, ray_local, tmp_path,
                                                                         capsys, cache_mb):
    manifest = copy_dataset(prepared_shards, str(tmp_path / "data"))
    uri = load_manifest(manifest).shard_uris("train")[0]
    flip_image_page(uri)  # the footer is intact: found when the pages are read
    assert main([*args(manifest, tmp_path), "--cache-mb", cache_mb, "--max-failures", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: shard {uri} is corrupt (could not verify page integrity, CRC checksum verification "
                       "failed for page_ordinal 0): re-run pipeline.prepare to rewrite it"), err[-1]
    # The split is read once the job's MLflow run is open (Ray Train calls the dataset factory): the run says why.
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    records = client.search_runs([client.get_experiment_by_name("verydeep").experiment_id])
    assert [(r.info.status, r.data.tags["verydeep.failure"]) for r in records] == [("FAILED", err[-1][len("error: "):])]
