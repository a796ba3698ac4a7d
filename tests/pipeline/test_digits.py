"""The demo's real images: scikit-learn's digits rendered into ImageNet's layout, deterministic, read by prepare."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cli_refusal import refused
from PIL import Image

from pipeline.digits import ASPECT, SHORT_SIDE, WNIDS, render_digits, split_indices
from pipeline.imagenet import parse_loc_solution


def test_split_is_fixed_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), 180)
    train, val = split_indices(labels, seed=0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels)
    assert Counter(labels[val]) == {c: 36 for c in range(10)}  # 20% of each class
    again_train, again_val = split_indices(labels, seed=0)
    assert np.array_equal(val, again_val) and not np.array_equal(val, split_indices(labels, seed=1)[1])


def test_renders_the_imagenet_layout_with_varied_sizes(tmp_path):
    root = render_digits(tmp_path / "digits")
    train = sorted((root / "train").glob("*/*.JPEG"))
    val = sorted((root / "val").glob("*.JPEG"))
    assert len(train) + len(val) == 1797 and 350 <= len(val) <= 370
    assert sorted(p.name for p in (root / "train").iterdir()) == list(WNIDS)
    labels = parse_loc_solution((root / "LOC_val_solution.csv").read_text(), "LOC_val_solution.csv")
    assert set(labels) == {p.stem for p in val} and set(labels.values()) == set(WNIDS)
    shorts, aspects = [], []
    for path in train[::50] + val[::20]:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            w, h = image.size
        shorts.append(min(w, h))
        aspects.append(w / h)
    assert SHORT_SIDE[0] <= min(shorts) and max(shorts) <= SHORT_SIDE[1] and max(shorts) - min(shorts) >= 16
    assert min(aspects) < 0.9 and max(aspects) > 1.2  # portrait and landscape both occur
    assert ASPECT[0] - 0.02 <= min(aspects) and max(aspects) <= ASPECT[1] + 0.02

    first = (root / "val" / val[0].name).read_bytes()
    assert render_digits(tmp_path / "digits") == root  # complete: not rendered again
    again = render_digits(tmp_path / "other")
    assert (again / "val" / val[0].name).read_bytes() == first  # deterministic bytes


@pytest.mark.parametrize("case", ["dst is a file", "dst cannot be created", "negative seed"])
def test_bad_flags_are_one_error_line_and_nothing_written(case, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    dst, flag, extra = {
        "dst is a file": (a_file, "--dst", []),
        "dst cannot be created": (Path("/proc/verydeep-digits"), "--dst", []),  # the kernel's, never writable
        "negative seed": (tmp_path / "digits", "--seed", ["--seed", "-1"]),
    }[case]
    line = refused("pipeline.digits", ["--dst", str(dst), *extra], tmp_path)
    assert f"{flag} " in line and ("-1" if flag == "--seed" else str(dst)) in line, line
    assert a_file.read_text() == "not a directory\n" and not (tmp_path / "digits").exists()
