"""pipeline.imagenet: the source tree's listing and the val label files."""

from __future__ import annotations

import pytest
from imagenet_fixture import make_tiny_imagenet

from pipeline.imagenet import PrepareError, parse_ground_truth, parse_loc_solution, parse_synsets, scan_source


def test_symlinks_that_lead_nowhere_are_listed_as_skipped(tmp_path):
    tiny = make_tiny_imagenet(tmp_path / "src", per_class=1, val_per_class=1, quirks=False)
    w0, w1 = tiny.wnids[:2]
    good = next((tiny.root / "train" / w0).iterdir())
    (tiny.root / "train" / w0 / "a_good_link.JPEG").symlink_to(good)
    (tiny.root / "train" / w0 / "dangling.JPEG").symlink_to(tmp_path / "gone.JPEG")
    (tiny.root / "train" / w1 / "loop.JPEG").symlink_to("loop.JPEG")
    (tiny.root / "val" / w1 / "other_loop.JPEG").symlink_to("other_loop.JPEG")
    (tiny.root / "train" / w1 / "linked").symlink_to(tiny.root / "train" / w1)  # a directory loop: each once
    listing = scan_source(str(tiny.root))
    reasons = {s["path"]: s["reason"] for s in listing.skipped}
    gone = tmp_path / "gone.JPEG"
    assert reasons[f"train/{w0}/dangling.JPEG"] == f"dangling symlink (its target {gone} does not exist)"
    assert reasons[f"train/{w1}/loop.JPEG"].startswith("symlink loop")
    assert reasons[f"val/{w1}/other_loop.JPEG"].startswith("symlink loop")
    assert sum("symlink" in r for r in reasons.values()) == 3
    listed = {f.path for split in listing.files.values() for f in split}
    assert f"train/{w0}/a_good_link.JPEG" in listed and not listed & set(reasons)


def test_val_label_parsers():
    loc = (
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000002,n02 1 2 3 4 n02 5 6 7 8\n"
        "ILSVRC2012_val_00000001,n01 1 2 3 4\n"
    )
    assert parse_loc_solution(loc, "x.csv") == {"ILSVRC2012_val_00000001": "n01", "ILSVRC2012_val_00000002": "n02"}
    synsets = parse_synsets(b"n09 nine\nn01 one, first\n", "ids.txt")
    assert synsets == ["n09", "n01"]
    assert parse_ground_truth("2\n1\n2\n", synsets, "gt.txt") == {
        "ILSVRC2012_val_00000001": "n01",
        "ILSVRC2012_val_00000002": "n09",
        "ILSVRC2012_val_00000003": "n01",
    }
    with pytest.raises(PrepareError, match=r"gt.txt line 2: '3' is not an ILSVRC2012_ID in 1..2"):
        parse_ground_truth("1\n3\n", synsets, "gt.txt")
    with pytest.raises(PrepareError, match="ImageId,PredictionString"):
        parse_loc_solution("id,label\n", "x.csv")
