"""pipeline.targets: the VOC-2007 and Caltech-101/256 layouts (and plain folders) as shards + manifest, with splits."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from target_trees import make_caltech, make_voc2007

from pipeline.manifest import load_manifest
from pipeline.prepare import PrepareConfig, PrepareError, main as prepare_main, prepare
from pipeline.targets import (
    TargetOptions,
    annotation_codes,
    draw_splits,
    parse_image_set,
    parse_target,
    read_labels,
    scan_caltech,
    scan_folders,
    scan_voc,
    split_rows,
    target_of,
)

ROOT = Path(__file__).resolve().parents[2]


def _cfg(src: Path, layout: str, **kw) -> TargetOptions:
    return TargetOptions(layout=layout, **kw)


# --- listings and splits: no Ray ------------------------------------------------------------------------------------


def test_voc_listing_reads_sets_codes_and_the_difficult_flag(tmp_path):
    tree = make_voc2007(tmp_path / "src")
    listing = scan_voc(_cfg(tree.root, "voc2007"), str(tree.root))
    assert list(listing.classes) == tree.classes and list(listing.files) == ["train", "val", "test"]
    for s in ("train", "val", "test"):
        files = listing.files[s]
        assert [f.key for f in files] == tree.sets[s]
        for f in files:
            assert f.path == f"VOCdevkit/VOC2007/JPEGImages/{f.key}.jpg" and f.label == -1 and f.wnid == ""
            assert f.targets == tree.codes[f.key]
    codes = np.array([f.targets for s in listing.files.values() for f in s])
    assert {0, 1, -1} <= set(codes.ravel().tolist())  # difficult-only images exist in the tree
    assert listing.target["multilabel"] and listing.target["splits"] == [tree.sets]


def test_voc_codes_from_annotations_equal_the_devkit_class_files(tmp_path):
    with_files = make_voc2007(tmp_path / "a")
    without = make_voc2007(tmp_path / "b", class_files=False)
    a = scan_voc(_cfg(with_files.root, "voc2007"), str(with_files.root))
    b = scan_voc(_cfg(without.root, "voc2007"), str(without.root))
    assert a.classes == b.classes
    assert [f.targets for s in a.files.values() for f in s] == [f.targets for s in b.files.values() for f in s]


def test_voc_parsers_by_hand():
    # The devkit writes "%s %2d": a positive is "000005  1".
    assert parse_image_set("000005  1\n000007 -1\n000009  0\n", "x") == {"000005": 1, "000007": -1, "000009": 0}
    assert parse_image_set("000005\n000007\n", "x") == {"000005": 1, "000007": 1}
    with pytest.raises(PrepareError, match="x line 1"):
        parse_image_set("000005 2\n", "x")
    xml = (b"<annotation><object><name>dog</name><difficult>1</difficult></object>"
           b"<object><name>cat</name><difficult>0</difficult></object>"
           b"<object><name>cat</name><difficult>1</difficult></object></annotation>")
    # dog: only a difficult one -> 0; cat: one not difficult -> 1; bird: none -> -1.
    assert annotation_codes(xml, ["bird", "cat", "dog"], "a.xml") == (-1, 1, 0)


def test_voc_without_a_test_set_is_one_error(tmp_path):
    tree = make_voc2007(tmp_path / "src")
    (tree.root / "VOCdevkit/VOC2007/ImageSets/Main/test.txt").unlink()
    with pytest.raises(PrepareError, match="no test.txt"):
        scan_voc(_cfg(tree.root, "voc2007"), str(tree.root))


@pytest.mark.parametrize("layout", ["caltech101", "caltech256"])
def test_caltech_splits_follow_the_protocol(tmp_path, layout):
    tree = make_caltech(tmp_path / "src", layout, per_class=(12, 13, 15, 12))
    cfg = _cfg(tree.root, layout, train_per_class=5, test_per_class=4 if layout == "caltech101" else None, seed=7)
    listing = scan_caltech(cfg, str(tree.root))
    assert sorted(listing.classes) == sorted(tree.classes) and len(listing.classes) == 4  # background is a class
    (skipped,) = listing.skipped
    assert skipped["path"].endswith("/Thumbs.db") and "not an image file name" in skipped["reason"]
    splits = listing.target["splits"]
    assert len(splits) == 3 and listing.target["seed"] == 7
    for split in splits:
        parts = {p: set(split[p]) for p in ("train", "val", "test")}
        assert not (parts["train"] & parts["val"]) and not (parts["train"] | parts["val"]) & parts["test"]
        per_class = {p: Counter(k.split("/")[0] for k in parts[p]) for p in parts}
        for c, n in tree.classes.items():
            # 5 training images per class, round(0.2 * 5) = 1 of them held out; Caltech-101: up to 4 test images,
            # Caltech-256: all the rest.
            assert (per_class["train"][c], per_class["val"][c]) == (4, 1)
            assert per_class["test"][c] == (4 if layout == "caltech101" else n - 5)
    assert splits[0] != splits[1] != splits[2]
    # The stored splits are the first split's, and the images it leaves out are stored too (as rest).
    stored = {s: [f.key for f in fs] for s, fs in listing.files.items()}
    assert {s: sorted(v) for s, v in stored.items() if s != "rest"} == splits[0]
    assert sum(len(v) for v in stored.values()) == sum(tree.classes.values())
    assert ("rest" in stored) == (layout == "caltech101")
    # The same seed gives the same splits; another seed others.
    assert scan_caltech(cfg, str(tree.root)).target["splits"] == splits
    other = scan_caltech(_cfg(tree.root, layout, train_per_class=5, seed=8), str(tree.root)).target["splits"]
    assert other[0] != splits[0]


def test_caltech_defaults_and_the_background_class(tmp_path):
    tree = make_caltech(tmp_path / "src", "caltech101", per_class=(31, 32, 33, 31))
    listing = scan_caltech(_cfg(tree.root, "caltech101"), str(tree.root))
    t = listing.target
    assert (t["train_per_class"], t["test_per_class"], t["val_fraction"]) == (30, 50, 0.2)
    assert Counter(k.split("/")[0] for k in t["splits"][0]["val"])["Faces"] == 6  # 20 % of 30
    assert "BACKGROUND_Google" in listing.classes
    excluded = scan_caltech(_cfg(tree.root, "caltech101", background="exclude"), str(tree.root))
    assert "BACKGROUND_Google" not in excluded.classes and excluded.target["excluded_class"] == "BACKGROUND_Google"
    assert list(excluded.classes.values()) == [0, 1, 2]
    with pytest.raises(PrepareError, match="has 31 images: it needs more than --train-per-class 31"):
        scan_caltech(_cfg(tree.root, "caltech101", train_per_class=31), str(tree.root))


def test_draw_splits_by_hand():
    # One class of 10 keys, 5 for training with 20 % (1) held out, up to 3 for test: 4 + 1 + 3, 2 left out.
    (split,) = draw_splits({"c": [f"c/{i}" for i in range(10)]}, 5, 3, 0.2, seed=0, count=1)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (4, 1, 3)
    assert len(set(split["train"]) | set(split["val"]) | set(split["test"])) == 8


def test_folders_with_train_and_test(tmp_path):
    rng = np.random.default_rng(0)
    from target_trees import jpeg

    for s, n in (("train", 5), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / "src" / s / c).mkdir(parents=True)
            for i in range(n):
                (tmp_path / "src" / s / c / f"{i}.jpg").write_bytes(jpeg(rng, (10, 20, 30)))
    listing = scan_folders(_cfg(tmp_path / "src", "folders"), str(tmp_path / "src"))
    (split,) = listing.target["splits"]
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (8, 2, 4)  # round(0.2 * 5) = 1 per class
    assert all(k.startswith("test/") for k in split["test"]) and list(listing.classes) == ["a", "b"]


def test_bad_target_flags_are_one_line(tmp_path):
    for args, match in (
        (["--layout", "voc2007", "--val-fraction", "1.5"], "val_fraction"),
        (["--layout", "caltech101", "--background", "maybe"], "background"),
        (["--layout", "nonsense"], "--layout"),
    ):
        proc = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--src", str(tmp_path), "--dst",
                               str(tmp_path / "out"), *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and match in proc.stderr, proc.stderr
        assert not (tmp_path / "out").exists()


# --- the job, on Ray ------------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_voc_shards_carry_per_class_codes(ray_local, tmp_path, capsys):
    tree = make_voc2007(tmp_path / "src")
    dst = tmp_path / "voc"
    assert prepare_main(["--layout", "voc2007", "--src", str(tree.root), "--dst", str(dst)]) == 0
    m = load_manifest(str(dst))
    assert list(m.splits) == ["train", "val", "test"] and m.wnids == tree.classes
    assert {s: m.splits[s].count for s in m.splits} == {s: len(v) for s, v in tree.sets.items()}
    target = target_of(m)
    assert target["layout"] == "voc2007" and target["splits"] == [tree.sets]
    table = pq.read_table(m.shard_uris("test")[0])
    assert table.schema.field("targets").type.value_type.bit_width == 8
    labels = read_labels(m)
    assert labels.targets.shape == (sum(len(v) for v in tree.sets.values()), len(tree.classes))
    for key, row in zip(labels.keys, labels.targets):
        assert tuple(row) == tree.codes[key]
    rows = split_rows(target, labels, 0)
    assert labels.keys[rows["test"]].tolist() == tree.sets["test"]
    for row in table.to_pylist():
        with Image.open(io.BytesIO(row["image"])) as img:
            assert img.size == (row["width"], row["height"])


@pytest.mark.ray
def test_caltech_job_stores_every_image_once_and_reruns_in_place(ray_local, tmp_path, capsys):
    tree = make_caltech(tmp_path / "src", "caltech101", per_class=(9, 10, 11, 9))
    cfg = PrepareConfig(src=str(tree.root), dst=str(tmp_path / "cal"))
    target = TargetOptions(layout="caltech101", train_per_class=5, test_per_class=3, seed=1)
    m = prepare(cfg, target)
    assert list(m.splits) == ["train", "val", "test", "rest"]
    labels = read_labels(m)
    assert len(labels.keys) == sum(tree.classes.values()) and labels.targets is None
    for key, label in zip(labels.keys, labels.labels):
        assert m.wnids[label] == key.split("/")[0]
    record = target_of(m)
    for i in range(3):
        rows = split_rows(record, labels, i)
        assert sorted(labels.keys[rows["train"]].tolist()) == record["splits"][i]["train"]
    assert any("Thumbs.db" in s["path"] for s in m.skipped)
    before = Path(m.root, "manifest.json").read_bytes()
    capsys.readouterr()
    prepare(cfg, target)
    assert "0 written" in capsys.readouterr().out and Path(m.root, "manifest.json").read_bytes() == before


def test_target_flags_are_read_apart_from_prepare_s():
    target, rest = parse_target(["--src", "a", "--layout", "caltech256", "--seed", "3", "--dst", "b"])
    assert target == TargetOptions(layout="caltech256", seed=3) and rest == ["--src", "a", "--dst", "b"]
    assert parse_target(["--layout", "imagenet", "--src", "a"]) == (None, ["--src", "a"])
    assert parse_target(["--src", "a"]) == (None, ["--src", "a"])
