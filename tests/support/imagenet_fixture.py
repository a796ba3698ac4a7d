"""A tiny fake ImageNet tree on disk, with the real set's quirks, for ingestion, Ray Data and decoding tests.

``make_tiny_imagenet(root)`` writes::

    train/<wnid>/<wnid>_<n>.JPEG     RGB JPEGs, 40-120 px a side, each class its own dominant colour
    train/<first wnid>/...           plus the quirks: a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG,
                                     and three bad files: empty, truncated JPEG, text named .JPEG
    val/...                          in class folders, or flat ILSVRC2012_val_<8 digits>.JPEG with labels as
                                     LOC_val_solution.csv ("flat_loc") or the devkit's ground truth ("flat_devkit":
                                     ILSVRC2012_devkit_t12/data/{ILSVRC2012_validation_ground_truth.txt, meta.mat}
                                     and synsets_by_id.txt, one wnid per line in ILSVRC2012_ID order)
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n02085620", "n02102040")
# The devkit numbers classes in its own order, not sorted-wnid order; the fixture does too, so that a reader that
# confuses the two gets the labels wrong.
DEVKIT_ORDER = ("n02085620", "n01440764", "n02102040", "n01443537")
COLOURS = ((200, 40, 40), (40, 170, 60), (50, 60, 210), (220, 200, 60))
VAL_LAYOUTS = ("folders", "flat_loc", "flat_devkit")


@dataclass(frozen=True)
class TinyImageNet:
    """A fake ImageNet root and what a correct ingestion must make of it. ``os.fspath(t)`` is the root."""

    root: Path
    wnids: tuple[str, ...]
    val_layout: str
    train_images: int  # usable training images, the three convertible quirks included
    val_images: int
    quirks: dict[str, str] = field(default_factory=dict)  # kind ("cmyk", "grayscale", "png") -> path under root
    bad: dict[str, str] = field(default_factory=dict)  # path under root -> a word its skip reason contains
    val_labels: dict[str, str] = field(default_factory=dict)  # val key ("val/<wnid>/<stem>") -> wnid

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)


def _image(
    rng: np.random.Generator, colour: tuple[int, int, int], min_side: int = 40, max_side: int = 120
) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.asarray(colour, np.float64)[None, None, :]
    ramp = (np.sin(xx / 7.0 + rng.uniform(0, 6)) + np.cos(yy / 5.0))[..., None] * 25.0
    noise = rng.normal(0, 6, size=(h, w, 3))
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray, mode: str = "RGB", quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_meta_mat(path: Path, wnids_in_id_order: tuple[str, ...]) -> None:
    """A devkit-like meta.mat: leaf synsets with ILSVRC2012_ID 1..N in the given order, plus one non-leaf entry."""
    import scipy.io

    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.zeros((len(wnids_in_id_order) + 1, 1), dtype=dtype)
    for i, wnid in enumerate(wnids_in_id_order):
        synsets[i, 0] = (np.int16(i + 1), wnid, f"class {wnid}", np.uint8(0))
    synsets[-1, 0] = (np.int16(len(wnids_in_id_order) + 1), "n00000001", "an inner node", np.uint8(2))
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"synsets": synsets})


def make_tiny_imagenet(
    root: str | os.PathLike,
    val_layout: str = "folders",
    per_class: int = 6,
    val_per_class: int = 2,
    quirks: bool = True,
    wnids: tuple[str, ...] = WNIDS,
    seed: int = 0,
) -> TinyImageNet:
    """Write a tiny ImageNet-layout tree under ``root`` (see the module docstring) and describe it."""
    if val_layout not in VAL_LAYOUTS:
        raise ValueError(f"val_layout must be one of {VAL_LAYOUTS}, got {val_layout!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = dict(zip(WNIDS, COLOURS, strict=True))
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            _write(
                root / "train" / wnid / f"{wnid}_{1000 * c + i + 1}.JPEG",
                _jpeg(_image(rng, colours.get(wnid, (128, 128, 128)))),
            )

    quirk_paths: dict[str, str] = {}
    bad: dict[str, str] = {}
    if quirks:
        w0 = wnids[0]
        q = {
            "cmyk": _jpeg(_image(rng, (180, 90, 30)), "CMYK"),
            "grayscale": _jpeg(_image(rng, (128, 128, 128)), "L"),
            "png": _png(_image(rng, (30, 140, 160))),
        }
        for kind, data in q.items():
            rel = f"train/{w0}/{w0}_{kind}.JPEG"
            _write(root / rel, data)
            quirk_paths[kind] = rel
        good = _jpeg(_image(rng, (100, 100, 100), 80, 120))
        for name, data, reason in (
            ("empty", b"", "empty"),
            ("truncated", good[: len(good) // 2], "truncated"),
            ("text", b"this is not an image\n", "not an image"),
        ):
            rel = f"train/{w0}/{w0}_{name}.JPEG"
            _write(root / rel, data)
            bad[rel] = reason

    val_labels: dict[str, str] = {}
    n = 0
    flat_rows: list[tuple[str, str]] = []
    for _ in range(val_per_class):
        for wnid in wnids:
            n += 1
            stem = f"ILSVRC2012_val_{n:08d}"
            data = _jpeg(_image(rng, colours.get(wnid, (128, 128, 128))))
            if val_layout == "folders":
                _write(root / "val" / wnid / f"{stem}.JPEG", data)
            else:
                _write(root / "val" / f"{stem}.JPEG", data)
                flat_rows.append((stem, wnid))
            val_labels[f"val/{wnid}/{stem}"] = wnid
    if val_layout == "flat_loc":
        lines = ["ImageId,PredictionString"] + [
            f"{stem},{w} 1 2 30 40 {w} 5 6 70 80" for stem, w in reversed(flat_rows)
        ]
        (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    elif val_layout == "flat_devkit":
        data_dir = root / "ILSVRC2012_devkit_t12" / "data"
        order = tuple(w for w in DEVKIT_ORDER if w in wnids) + tuple(w for w in wnids if w not in DEVKIT_ORDER)
        ids = {w: order.index(w) + 1 for w in order}
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for _, w in flat_rows))
        write_meta_mat(data_dir / "meta.mat", order)
        (root / "synsets_by_id.txt").write_text("".join(f"{w} class {w}\n" for w in order))

    return TinyImageNet(
        root=root,
        wnids=tuple(sorted(wnids)),
        val_layout=val_layout,
        train_images=per_class * len(wnids) + len(quirk_paths),
        val_images=val_per_class * len(wnids),
        quirks=quirk_paths,
        bad=bad,
        val_labels=val_labels,
    )
