"""Small source trees in the transfer targets' real layouts (VOC-2007 devkit, Caltech-101/256), made on the spot.

Images are tiny JPEGs whose colour depends on their class (VOC: on the classes present), so that features of even an
untrained net tell classes apart a little, as real images would.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = [(200, 40, 40), (40, 180, 60), (50, 60, 210), (210, 200, 40), (180, 60, 200), (40, 190, 200),
           (120, 120, 120), (240, 140, 40)]


def jpeg(rng: np.random.Generator, colour: tuple[int, int, int], h: int = 40, w: int = 52) -> bytes:
    """A small RGB JPEG: ``colour`` plus noise and a brighter square."""
    x = np.clip(np.asarray(colour, np.float32) + rng.normal(0, 20, (h, w, 3)), 0, 255)
    t, l = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    x[t : t + h // 3, l : l + w // 3] = np.clip(x[t : t + h // 3, l : l + w // 3] + 60, 0, 255)
    out = io.BytesIO()
    Image.fromarray(x.astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


@dataclass
class VocTree:
    """A VOC-2007 devkit tree: ``root`` (the folder above VOCdevkit), image ids per set and each image's objects."""

    root: Path
    classes: list[str]
    sets: dict[str, list[str]]
    objects: dict[str, list[tuple[str, bool]]]  # id -> [(class, difficult)]
    codes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # id -> per-class code (1 / 0 / -1)


def _annotation(image_id: str, objects: list[tuple[str, bool]], h: int, w: int) -> str:
    objs = "".join(
        f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{w - 1}</xmax><ymax>{h - 1}</ymax></bndbox></object>"
        for c, d in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>\n")


def make_voc2007(root: Path, classes: tuple[str, ...] = ("bird", "cat", "dog"), counts=(6, 5, 8), seed: int = 0,
                 class_files: bool = True) -> VocTree:
    """VOCdevkit/VOC2007 under ``root`` with train/val/test image sets of ``counts`` images; every class present
    at least once per set, some objects difficult; ``class_files=False`` leaves out ImageSets/Main/<class>_*.txt."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    tree = VocTree(root, list(classes), {}, {})
    n = 0
    for s, count in zip(("train", "val", "test"), counts):
        ids = []
        for j in range(count):
            n += 1
            image_id = f"{n:06d}"
            first = classes[j % len(classes)]  # every class present in every set
            objects = [(first, False)]
            for c in classes:
                if c != first and rng.random() < 0.35:
                    objects.append((c, bool(rng.random() < 0.5)))
            if j == len(classes):  # one image whose only object of its class is difficult
                objects[0] = (first, True)
            h, w = 40 + 4 * (n % 3), 52
            colour = np.mean([PALETTE[classes.index(c)] for c, _ in objects], axis=0).astype(int)
            (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg(rng, tuple(colour), h, w))
            (voc / "Annotations" / f"{image_id}.xml").write_text(_annotation(image_id, objects, h, w))
            tree.objects[image_id] = objects
            tree.codes[image_id] = tuple(
                1 if any(o == c and not d for o, d in objects) else 0 if any(o == c for o, _ in objects) else -1
                for c in classes)
            ids.append(image_id)
        tree.sets[s] = ids
    main = voc / "ImageSets" / "Main"
    sets = {**tree.sets, "trainval": tree.sets["train"] + tree.sets["val"]}
    for s, ids in sets.items():
        (main / f"{s}.txt").write_text("".join(f"{i}\n" for i in ids))
        if class_files:
            for k, c in enumerate(classes):  # the devkit's "%s %2d" lines
                (main / f"{c}_{s}.txt").write_text("".join(f"{i} {tree.codes[i][k]:2d}\n" for i in ids))
    return tree


@dataclass
class CaltechTree:
    """A Caltech-101 or -256 tree: ``root`` (the folder above <n>_ObjectCategories) and images per class."""

    root: Path
    classes: dict[str, int]  # folder name -> images
    background: str


def make_caltech(root: Path, layout: str = "caltech101", per_class=(7, 8, 9, 7), seed: int = 0) -> CaltechTree:
    """``101_ObjectCategories/<class>/image_0001.jpg`` (or 256's ``001.ak47/001_0001.jpg``) with a background class
    last, and a stray non-image file that the listing skips."""
    rng = np.random.default_rng(seed)
    if layout == "caltech101":
        top, names = "101_ObjectCategories", ["Faces", "accordion", "airplanes", "BACKGROUND_Google"]
    else:
        top, names = "256_ObjectCategories", ["001.ak47", "002.american-flag", "003.backpack", "257.clutter"]
    names = names[-len(per_class):] if len(per_class) < len(names) else names
    tree = CaltechTree(root, {}, names[-1])
    for k, (name, count) in enumerate(zip(names, per_class)):
        folder = root / top / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            stem = f"image_{i:04d}" if layout == "caltech101" else f"{name[:3]}_{i:04d}"
            (folder / f"{stem}.jpg").write_bytes(jpeg(rng, PALETTE[k]))
        tree.classes[name] = count
    (root / top / names[0] / "Thumbs.db").write_bytes(b"\0" * 16)
    return tree
