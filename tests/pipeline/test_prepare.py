"""pipeline.prepare and pipeline.manifest: ImageNet -> Parquet shards + manifest, quirks, resumability, errors."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_refusal import refused
from imagenet_fixture import make_tiny_imagenet
from PIL import Image
from source_images import declaring, png16

from pipeline import storage
from pipeline.convert import decode_rgb, sample_pixels
from pipeline.imagenet import scan_source
from pipeline.manifest import FORMAT, ManifestError, load_manifest
from pipeline.prepare import PrepareConfig, _run_shards, parse_args, plan_splits, prepare, shard_spec
from pipeline.shards import COMMIT_DELAY_ENV, ShardPlan, SourceFile

ROOT = Path(__file__).resolve().parents[2]
SECRET = "wJalrXUtnFEMI-very-secret-value"


def _rows(manifest, split: str) -> dict[str, dict]:
    """key -> row of every shard of a split, read straight from the files the manifest lists."""
    rows = {}
    for uri in manifest.shard_uris(split):
        fs, path = storage.resolve(uri)
        for row in pq.read_table(path, filesystem=fs).to_pylist():
            assert row["key"] not in rows, f"duplicate key {row['key']}"
            rows[row["key"]] = row
    return rows


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in (env or os.environ).items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.prepare", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# --- pure functions: no Ray ------------------------------------------------------------------------------------------


def test_flags_are_generated_from_the_config():
    cfg = parse_args(["--src", "a", "--dst", "s3://b/c", "--max-shorter-side", "512", "--target-shard-mb", "128"])
    assert cfg == PrepareConfig(src="a", dst="s3://b/c", max_shorter_side=512, target_shard_mb=128.0)
    with pytest.raises(SystemExit):
        parse_args(["--src", "a", "--dst", "b", "--jpeg-quality", "0"])


def test_help_groups_the_flags_with_readable_metavars_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    titles = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["options", "where", "shards", "images", "labels of a flat val/",
                      "colour statistics (the paper's colour shift)", "running"], titles
    for shown in ("--src URI", "--dst URI", "--target-shard-mb MIB", "--max-shorter-side PIXELS",
                  "--jpeg-quality 1-100", "--val-labels FILE", "--s3-endpoint URL", "--ray-address ADDRESS"):
        assert shown in text, shown
    flat = " ".join(text.split())
    assert "(default: 256.0)" in flat and "(default: 95)" in flat and "(default: 16)" in flat


def test_load_manifest_errors_are_one_line(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest .*manifest.json: not found"):
        load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ManifestError) as info:
        load_manifest(str(tmp_path / "manifest.json"))
    assert "\n" not in str(info.value) and FORMAT in str(info.value)


# --- the job, in-process on the shared Ray instance ------------------------------------------------------------------


@pytest.mark.ray
def test_prepared_manifest_and_shards(prepared_shards, tiny_imagenet):
    m = load_manifest(prepared_shards)
    doc = json.loads(Path(prepared_shards).read_text())
    assert list(doc) == ["format", "classes", "splits", "stats", "skipped", "options"] and doc["format"] == FORMAT
    assert list(m.classes) == sorted(tiny_imagenet.wnids) and list(m.classes.values()) == list(range(4))
    assert m.num_classes == 4 and m.wnids == sorted(tiny_imagenet.wnids)
    assert m.splits["train"].count == tiny_imagenet.train_images and m.splits["val"].count == tiny_imagenet.val_images
    root = Path(prepared_shards).parent
    for split in ("train", "val"):
        for shard, uri in zip(m.splits[split].shards, m.shard_uris(split), strict=True):
            assert not Path(shard.path).is_absolute() and uri == str(root / shard.path)
            data = Path(uri).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (shard.bytes, shard.sha256)
            assert pq.read_metadata(uri).num_rows == shard.rows
    # Skipped files: each bad file once, with its reason.
    assert {s["path"]: s["reason"] for s in m.skipped}.keys() == tiny_imagenet.bad.keys()
    for s in m.skipped:
        assert tiny_imagenet.bad[s["path"]] in s["reason"]
    assert m.options["max_shorter_side"] is None and m.options["src"] == str(tiny_imagenet.root)

    train, val = _rows(m, "train"), _rows(m, "val")
    assert set(val) == set(tiny_imagenet.val_labels)
    for key, row in {**train, **val}.items():
        split, wnid, stem = key.split("/")
        assert row["wnid"] == wnid and row["label"] == m.classes[wnid]
        with Image.open(io.BytesIO(row["image"])) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (row["width"], row["height"]))
        src = tiny_imagenet.root / split / wnid / f"{stem}.JPEG"
        if stem.split("_")[-1].isdigit():  # an ordinary RGB JPEG: stored unchanged
            assert row["image"] == src.read_bytes()
    cmyk = train[tiny_imagenet.quirks["cmyk"].rsplit(".", 1)[0]]
    with Image.open(tiny_imagenet.root / tiny_imagenet.quirks["cmyk"]) as img:
        assert np.abs(decode_rgb(cmyk["image"]).astype(int) - np.asarray(img.convert("RGB")).astype(int)).mean() < 3.5


@pytest.mark.ray
def test_colour_stats_match_numpy_on_the_same_sample(prepared_shards, tiny_imagenet):
    m = load_manifest(prepared_shards)
    cfg = PrepareConfig(src=str(tiny_imagenet.root), dst="unused")
    plans = [p for p in plan_splits(cfg, scan_source(str(tiny_imagenet.root))) if p.split == "train"]
    stored = _rows(m, "train")
    sampled = [f.key for p in plans for f in p.files if f.stats and f.key in stored]
    pixels = np.concatenate(
        [sample_pixels(decode_rgb(stored[k]["image"]), k, cfg.stats_pixels_per_image) for k in sampled]
    )
    assert (m.stats.sample_images, m.stats.sample_pixels) == (len(sampled), len(pixels))
    np.testing.assert_allclose(m.mean_rgb, pixels.mean(axis=0), rtol=1e-9)
    w, v = np.linalg.eigh(np.cov(pixels.T.astype(np.float64), bias=True))
    np.testing.assert_allclose(m.eigval, w[::-1], rtol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(m.eigvec * v[:, ::-1], axis=0)), 1.0, atol=1e-6)  # same axes up to sign
    assert np.all((m.mean_rgb > 0) & (m.mean_rgb < 255))
    assert np.all(m.eigval > 0) and np.all(np.diff(m.eigval) < 0)
    np.testing.assert_allclose(m.eigvec.T @ m.eigvec, np.eye(3), atol=1e-9)
    # Each sampled image weighs the same (a fixed pixel count), so the sample estimates the mean of image means.
    image_means = np.mean([decode_rgb(stored[k]["image"]).reshape(-1, 3).mean(axis=0) for k in sampled], axis=0)
    assert np.abs(m.mean_rgb - image_means).max() < 2.0


@pytest.mark.ray
@pytest.mark.parametrize(
    "layout,synsets", [("flat_loc", None), ("flat_devkit", None), ("flat_devkit", "synsets_by_id.txt")]
)
def test_flat_val_layouts_give_the_same_labels(ray_local, tmp_path, layout, synsets):
    tiny = make_tiny_imagenet(tmp_path / "src", val_layout=layout, per_class=2, quirks=False)
    m = prepare(
        PrepareConfig(
            src=str(tiny.root),
            dst=str(tmp_path / "dst"),
            val_synsets=str(tiny.root / synsets) if synsets else None,
            stats_images=4,
        )
    )
    assert m.options["val_layout"] == "flat" and m.skipped == ()
    val = _rows(load_manifest(str(tmp_path / "dst")), "val")
    assert {k: r["wnid"] for k, r in val.items()} == tiny.val_labels
    assert all(r["label"] == m.classes[r["wnid"]] for r in val.values())


@pytest.mark.ray
def test_image_cases_end_to_end_are_stored_scaled_or_skipped_and_counted(ray_local, tmp_path, capsys):
    tiny = make_tiny_imagenet(tmp_path / "src", per_class=2, val_per_class=1, quirks=False)
    w0 = tiny.wnids[0]
    cases = tiny.root / "train" / w0
    (cases / "grey16.JPEG").write_bytes(png16(np.full((48, 64), 32640)))
    (cases / "huge.JPEG").write_bytes(declaring(12000, 12000))
    (cases / "dangling.JPEG").symlink_to(tmp_path / "gone.JPEG")
    (cases / "loop.JPEG").symlink_to("loop.JPEG")
    m = prepare(PrepareConfig(src=str(tiny.root), dst=str(tmp_path / "dst"), stats_images=4))
    reasons = {s["path"]: s["reason"] for s in m.skipped}
    assert reasons.keys() == {f"train/{w0}/{n}.JPEG" for n in ("huge", "dangling", "loop")}
    assert "over --max-megapixels 64: not decoded" in reasons[f"train/{w0}/huge.JPEG"]
    assert reasons[f"train/{w0}/dangling.JPEG"].startswith("dangling symlink")
    assert reasons[f"train/{w0}/loop.JPEG"].startswith("symlink loop")
    assert m.options["max_megapixels"] == 64.0 and m.splits["train"].count == tiny.train_images + 1
    out = capsys.readouterr().out
    assert "skipped 3 files" in out.splitlines()[-1] and f"skipped train/{w0}/loop.JPEG: symlink loop" in out
    grey = _rows(m, "train")[f"train/{w0}/grey16"]
    assert abs(decode_rgb(grey["image"]).mean() - 127.0) < 1.0 and (grey["height"], grey["width"]) == (48, 64)


@pytest.mark.ray
def test_rerun_on_a_finished_destination_rewrites_nothing(prepared_shards, tiny_imagenet, capsys):
    root = Path(prepared_shards).parent
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    text = Path(prepared_shards).read_bytes()
    m = prepare(PrepareConfig(src=str(tiny_imagenet.root), dst=str(root)))
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before
    assert Path(prepared_shards).read_bytes() == text and m.to_json().encode() == text
    assert "(0 written, 2 kept)" in capsys.readouterr().out


@pytest.mark.ray
def test_new_options_on_an_old_destination_replace_its_manifest(tiny_imagenet, ray_local, tmp_path, capsys):
    dst = tmp_path / "dst"
    first = prepare(PrepareConfig(src=str(tiny_imagenet.root), dst=str(dst), max_rows_per_shard=20))
    second = prepare(
        PrepareConfig(src=str(tiny_imagenet.root), dst=str(dst), max_rows_per_shard=20, max_shorter_side=64)
    )
    assert first.options["plan_sha256"] != second.options["plan_sha256"]
    assert load_manifest(str(dst)).to_dict() == second.to_dict()
    assert [s.path for s in first.splits["train"].shards] == [s.path for s in second.splits["train"].shards]
    assert [s.sha256 for s in first.splits["train"].shards] != [s.sha256 for s in second.splits["train"].shards]
    assert "(3 written, 0 kept)" in capsys.readouterr().out  # same names, other content: all rebuilt
    for row in _rows(second, "train").values():
        assert min(row["height"], row["width"]) <= 64
    prepare(PrepareConfig(src=str(tiny_imagenet.root), dst=str(dst)))  # default shard size: other shard names
    assert "note: 2 Parquet files" in capsys.readouterr().out  # train-0000[01]-of-00002; val-00000-of-00001 is reused


@pytest.mark.ray
@pytest.mark.s3
def test_local_to_s3_matches_local_and_reruns_in_place(prepared_shards, tiny_imagenet, s3_server):
    dst = storage.join(s3_server.create_bucket(), "shards")
    prepare(PrepareConfig(src=str(tiny_imagenet.root), dst=dst))
    m = load_manifest(dst)
    local = load_manifest(prepared_shards)
    assert m.to_dict() == local.to_dict()  # same bytes in every shard, whatever the destination
    assert m.shard_uris("val") == [f"{dst}/{local.splits['val'].shards[0].path}"]
    for uri, shard in zip(m.shard_uris("train"), m.splits["train"].shards, strict=True):
        assert storage.sha256_of(uri) == (shard.sha256, shard.bytes)

    bucket, prefix = storage.split_s3(dst)

    def objects():
        listing = s3_server.client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing}

    before = objects()
    assert set(before) == {f"{prefix}/manifest.json"} | {
        f"{prefix}/{s.path}" for sp in m.splits.values() for s in sp.shards
    }
    time.sleep(1.1)  # S3 timestamps have one-second resolution: a rewrite would now show
    prepare(PrepareConfig(src=str(tiny_imagenet.root), dst=dst))
    assert objects() == before


@pytest.mark.ray
def test_a_storage_failure_inside_a_shard_task_surfaces_as_one_line(ray_local, tmp_path):
    plan = ShardPlan("train", 0, 1, (SourceFile("train/n01/x", "train/n01/x.JPEG", 10, 0, "n01"),))
    cfg = PrepareConfig(src="a", dst="b", read_threads=1)
    spec = shard_spec(cfg, plan, "0" * 64, str(tmp_path / "vanished"), str(tmp_path / "dst"))
    with pytest.raises(storage.StorageError) as info:  # the task's own exception, its one line, not Ray's wrapper
        list(_run_shards([spec], memory_per_task=1 << 26))
    assert str(info.value) == f"not found: {tmp_path / 'vanished' / 'train/n01/x.JPEG'}"


# --- the CLI, as a user runs it (each starts its own Ray) -----------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_killed_run_resumes_to_the_clean_result(tiny_imagenet, ray_local, tmp_path):
    args = ["--src", str(tiny_imagenet.root), "--max-rows-per-shard", "6", "--num-cpus", "2"]
    clean = prepare(PrepareConfig(src=str(tiny_imagenet.root), dst=str(tmp_path / "clean"), max_rows_per_shard=6))
    n_shards = sum(len(sp.shards) for sp in clean.splits.values())
    assert n_shards == 5 + 2  # ceil(30 train files / 6) + ceil(8 val files / 6)

    dst = tmp_path / "killed"
    proc = _cli(*args, "--dst", str(dst), env={**os.environ, COMMIT_DELAY_ENV: "0.5"}, start_new_session=True)
    deadline = time.monotonic() + 120
    while not glob.glob(str(dst / "*" / "*.parquet")):
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before writing a shard"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes of its session
    proc.communicate()
    survivors = {p: p.stat().st_mtime_ns for p in dst.rglob("*.parquet")}
    assert not (dst / "manifest.json").exists()
    assert 1 <= len(survivors) < n_shards

    proc = _cli(*args, "--dst", str(dst))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert (dst / "manifest.json").read_bytes() == (tmp_path / "clean" / "manifest.json").read_bytes()
    assert {p: p.stat().st_mtime_ns for p in survivors} == survivors  # committed shards were kept, not rewritten
    # Ray's workers outlive their driver by a moment: one may still commit the shard it was writing (atomically).
    written, kept = (int(v) for v in re.search(r"\((\d+) written, (\d+) kept\)", out).groups())
    assert written + kept == n_shards and kept >= len(survivors) and written >= 1
    assert not [p for p in dst.rglob("*") if p.name.startswith(".")]  # no temp file left behind
    # Skipped files are counted and named on stdout.
    assert "skipped 3 files" in out.splitlines()[-1]
    for rel, reason in tiny_imagenet.bad.items():
        assert any(line.startswith(f"skipped {rel}: ") and reason in line for line in out.splitlines())


def _assert_one_error_line(proc: subprocess.Popen, must_contain: str) -> None:
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert must_contain in lines[0], lines[0]
    assert SECRET not in out + err


@pytest.mark.s3
def test_cli_errors_are_one_line(tiny_imagenet, s3_server, s3_server_strict, tmp_path):
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET}
    src = str(tiny_imagenet.root)
    closed = f"http://127.0.0.1:{_closed_port()}"
    cases = [
        (["--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "out")], env, "not found"),
        (["--src", src, "--dst", "s3://no-such-bucket/shards"], env, "bucket 'no-such-bucket' does not exist"),
        (["--src", src, "--dst", "s3://any-bucket/x", "--s3-endpoint", closed], env, "cannot reach the S3 endpoint"),
        (
            ["--src", src, "--dst", f"{s3_server_strict.bucket}/shards", "--s3-endpoint", s3_server_strict.endpoint],
            {**env, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1"},
            "rejected the credentials (InvalidAccessKeyId)",
        ),
    ]
    procs = [(_cli(*args, env=e), word) for args, e, word in cases]  # in parallel: none of them gets to start Ray
    for proc, word in procs:
        _assert_one_error_line(proc, word)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--target-shard-mb", "nan"),
        ("--target-shard-mb", "inf"),
        ("--row-group-mb", "nan"),
        ("--max-megapixels", "inf"),
        ("--s3-endpoint", "::not a url::"),
    ],
)
def test_bad_values_are_one_error_line_before_anything_is_written(flag, value, tiny_imagenet, tmp_path):
    dst = "s3://any-bucket/shards" if flag == "--s3-endpoint" else str(tmp_path / "out")
    line = refused("pipeline.prepare", ["--src", str(tiny_imagenet.root), "--dst", dst, flag, value], tmp_path)
    assert f"bad {flag[2:].replace('-', '_')} " in line and value in line, line
    assert not (tmp_path / "out").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
