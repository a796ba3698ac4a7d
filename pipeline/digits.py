"""A small real image set with no download: scikit-learn's UCI handwritten digits, rendered in ImageNet's layout.

    python -m pipeline.digits --dst DIR      # DIR/train/<wnid>/*.JPEG, DIR/val/*.JPEG + DIR/LOC_val_solution.csv

1,797 8x8 grey digits (10 classes) become RGB JPEGs of 64-96 px on the shorter side with varied aspect ratios, so a
scale-jittered training run really rescales and crops them; a fixed, stratified 20% is held out as a flat val/ with
its labels in the LOC_val_solution.csv format, exactly as ILSVRC-2012's. The tree is an input like any user's: it
goes through ``python -m pipeline.prepare`` unchanged. Rendering is deterministic (same seed, same bytes).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cli import OneLineParser

# Fake WordNet ids, one per digit, sorted like the digits so that label = digit after prepare's sorted-wnid indexing.
WNIDS = tuple(f"n0000000{d}" for d in range(10))
VAL_FRACTION = 0.2
SHORT_SIDE = (64, 96)  # shorter side range in pixels
ASPECT = (0.75, 1.5)  # width / height range
DONE = ".complete"


def _render(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """One 8x8 digit (0-16) -> an RGB JPEG of random size, aspect, ink and paper colours."""
    short = int(rng.integers(SHORT_SIDE[0], SHORT_SIDE[1] + 1))
    aspect = float(rng.uniform(*ASPECT))
    h, w = (short, int(round(short * aspect))) if aspect >= 1 else (int(round(short / aspect)), short)
    grey = Image.fromarray(np.uint8(digit * (255.0 / 16.0)), "L").resize((w, h), Image.Resampling.BICUBIC)
    alpha = np.asarray(grey, np.float32)[..., None] / 255.0
    ink = rng.uniform(0, 110, size=3)
    paper = rng.uniform(150, 255, size=3)
    rgb = paper * (1.0 - alpha) + ink * alpha + rng.normal(0, 6, size=alpha.shape[:2] + (3,))
    buf = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(rgb, 0, 255)), "RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def split_indices(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split: (train indices, val indices), VAL_FRACTION of each class held out."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * VAL_FRACTION))
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(train), np.sort(val)


def render_digits(dst: str | os.PathLike, seed: int = 0) -> Path:
    """Write the digits tree under ``dst`` (skipped when a complete one is already there); returns its root."""
    from sklearn.datasets import load_digits  # the data ships inside scikit-learn's wheel

    root = Path(dst)
    if (root / DONE).exists():
        return root
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(int)
    train, val = split_indices(labels, seed)
    rng = np.random.default_rng(seed)
    jpegs = [_render(images[i], rng) for i in range(len(images))]
    for i in train:
        path = root / "train" / WNIDS[labels[i]] / f"{WNIDS[labels[i]]}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpegs[i])
    (root / "val").mkdir(parents=True, exist_ok=True)
    rows = ["ImageId,PredictionString"]
    for n, i in enumerate(val, start=1):
        image_id = f"DIGITS_val_{n:08d}"
        (root / "val" / f"{image_id}.JPEG").write_bytes(jpegs[i])
        # LOC_val_solution.csv's PredictionString: "wnid xmin ymin xmax ymax" per box; the first token is the label.
        h, w = Image.open(io.BytesIO(jpegs[i])).size[::-1]
        rows.append(f"{image_id},{WNIDS[labels[i]]} 0 0 {w - 1} {h - 1}")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (root / DONE).write_text(f"{len(train)} train, {len(val)} val\n")
    return root


def writable_directory(dst: str | os.PathLike) -> str | None:
    """Why ``dst`` cannot hold the tree (it is a file, cannot be created, is read-only), or None when it can."""
    path = Path(dst)
    if path.exists() and not path.is_dir():
        return "not a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it ({exc.strerror or exc})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: render the tree and print where it is; bad flags print one ``error:`` line and exit with code 2."""
    parser = OneLineParser(prog="python -m pipeline.digits", description=__doc__.splitlines()[0])
    parser.add_argument("--dst", required=True, help="directory to write the ImageNet-layout tree into")
    parser.add_argument("--seed", type=int, default=0, help="seed of sizes, colours and the train/val split (>= 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"bad --seed {args.seed}: expected an integer >= 0")
    problem = writable_directory(args.dst)
    if problem:
        parser.error(f"bad --dst {args.dst}: {problem}")
    try:
        root = render_digits(args.dst, args.seed)
    except OSError as exc:  # the disk filling up or the directory vanishing half-way
        print(f"error: cannot write the digits under {args.dst}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"digits: {(root / DONE).read_text().strip()} in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
