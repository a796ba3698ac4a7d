"""Transfer targets (the paper's Appendix B) as shards + manifest: ``python -m pipeline.prepare --layout LAYOUT``.

    python -m pipeline.prepare --layout voc2007 --src /data/VOCdevkit/VOC2007 --dst s3://bucket/voc2007
    python -m pipeline.prepare --layout caltech101 --src /data/101_ObjectCategories --dst s3://bucket/caltech101
    python -m pipeline.prepare --layout caltech256 --src /data/256_ObjectCategories --dst s3://bucket/caltech256
    python -m pipeline.prepare --layout folders --src /data/mine --dst /shared/mine [--train-per-class N]

Source layouts (local directory or ``s3://`` prefix):

- ``voc2007``: the devkit's ``JPEGImages/<id>.jpg``, ``ImageSets/Main/{train,val,test}.txt`` (image ids) and
  ``ImageSets/Main/<class>_<set>.txt`` (``<id> <code>``: 1 present, 0 only 'difficult' objects of the class, -1
  absent); a class's code missing there is derived from ``Annotations/<id>.xml`` as the devkit derived those files
  (1 if an object of the class is not difficult, 0 if all are, -1 if there is none). Multi-label: every image has a
  code per class, stored in the shards' ``targets`` column. The split is fixed: train, val (train + val = the
  paper's trainval) and test. The source may also be a folder above ``VOC2007`` (``VOCdevkit/VOC2007`` is found).
- ``caltech101`` / ``caltech256``: one folder per class (``101_ObjectCategories/<class>/*.jpg``; the source may be
  that folder or the one above it). The background class (``BACKGROUND_Google``, resp. ``257.clutter``) is a class
  as in the paper's Table 11, which counts 102 resp. 257 classes (``--background exclude`` leaves it out, as the
  original 101-class Caltech benchmark did). ``--num-splits`` random splits (3 in the paper) are drawn from
  ``--seed``: per class ``--train-per-class`` training images (30 resp. 60), of which ``--val-fraction`` (20 %) are
  held out to choose the SVM's C, and ``--test-per-class`` test images (up to 50 for Caltech-101, all the rest for
  Caltech-256).
- ``folders``: ``train/<class>/`` and ``test/<class>/`` (a fixed split; ``--val-fraction`` of each class's training
  images held out, drawn from ``--seed``), or ``<class>/`` folders at the root split by the Caltech rule
  (``--train-per-class`` required).

Output: the shards and manifest of ``pipeline.prepare``. The splits in the manifest are the first split's
``train`` (its training images less the held-out ones), ``val`` (the held-out ones), ``test`` and, where some images
belong to none of them, ``rest``: every image is stored once, and a fine-tuning job reads ``train`` and ``val``.
``options.target`` records the layout, the split rule and every split's keys (``splits``: a list of
``{"train": [...], "val": [...], "test": [...]}``), which is what ``evaluation.transfer`` trains and tests on.
Keys are ``<class>/<file stem>`` (Caltech, root-level folders), ``<train|test>/<class>/<file stem>`` (folders
with train/ and test/) or the image id (VOC). Multi-label shards have ``label`` -1 and ``wnid`` "".
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.cli import Checked, build, build_parser, option, require
from pipeline.imagenet import Listing, PrepareError, _stem
from pipeline.manifest import Manifest
from pipeline.shards import SourceFile
from pipeline.verify import read_table
from vgg.paper import CALTECH_SPLITS, CALTECH_TEST_PER_CLASS, CALTECH_TRAIN_PER_CLASS, HELD_OUT_FRACTION

TARGET_LAYOUTS = ("voc2007", "caltech101", "caltech256", "folders")
BACKGROUND = {"caltech101": "BACKGROUND_Google", "caltech256": "257.clutter"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
VOC_SETS = ("train", "val", "test")
SPLIT_PARTS = ("train", "val", "test")
REST = "rest"  # stored images that the first split leaves out (Caltech-101 beyond 30 + 50 per class)
TARGET_OPTION = "target"  # the manifest's options key of the target record


@dataclass(frozen=True)
class TargetOptions(Checked):
    """A transfer target's layout and split rule (``pipeline.prepare --layout``; the rest are prepare's options)."""

    layout: str = option("imagenet", "source layout: imagenet (pipeline.prepare's own) or a transfer target",
                         choices=("imagenet", *TARGET_LAYOUTS))
    seed: int = option(0, "seed of the random splits and held-out images")
    num_splits: int = option(CALTECH_SPLITS, "random splits to draw (Caltech; folders without test/)")
    train_per_class: int | None = option(
        None, "training images per class, held-out ones included (default 30 for caltech101, 60 for caltech256; "
        "required for root-level folders)")
    test_per_class: int | None = option(
        None, "test images per class at most (default 50 for caltech101, else all the rest)")
    val_fraction: float = option(HELD_OUT_FRACTION, "fraction of each class's training images held out to choose "
                                 "the SVM's C")
    background: str = option("class", "Caltech's background class: class (the paper's 102 / 257 classes) or exclude",
                             choices=("class", "exclude"))

    def check(self) -> None:
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "a number in [0, 1)")
        for name in ("num_splits", "train_per_class", "test_per_class"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, "an integer of at least 1")


def parse_target(argv: Sequence[str]) -> tuple[TargetOptions | None, list[str]]:
    """The target flags among ``argv`` (None without ``--layout`` or for the imagenet layout) and the other flags;
    a bad target flag exits with one ``error:`` line. With ``--help`` the target flags' help comes first."""
    argv = list(argv)
    if not any(a == "--layout" or a.startswith("--layout=") for a in argv):
        return None, argv
    parser = build_parser(TargetOptions, "python -m pipeline.prepare --layout", __doc__.split("\n\n")[0],
                          add_help=False)
    given, rest = parser.parse_known_args(argv)
    if {"-h", "--help"} & set(argv):
        print(parser.format_help())
    try:
        target = build(TargetOptions, vars(given))
    except ValueError as e:
        parser.error(str(e))
    return (None if target.layout == "imagenet" else target), rest


# ---------------------------------------------------------------------------------------------------------------------
# Splits


def held_out(keys: Sequence[str], fraction: float) -> int:
    """How many of a class's training images are held out: ``fraction`` of them, rounded, leaving at least one."""
    n = int(round(fraction * len(keys)))
    return min(n, len(keys) - 1)


def draw_splits(by_class: dict[str, list[str]], train_per_class: int, test_per_class: int | None, val_fraction: float,
                seed: int, count: int) -> list[dict[str, list[str]]]:
    """``count`` random splits of class -> keys: per class ``train_per_class`` for training (the first
    ``val_fraction`` of them held out as ``val``) and up to ``test_per_class`` (None: all the rest) for ``test``."""
    small = [c for c, keys in by_class.items() if len(keys) <= train_per_class]
    if small:
        c = sorted(small)[0]
        raise PrepareError(f"class {c} has {len(by_class[c])} images: it needs more than --train-per-class "
                           f"{train_per_class} (some left to test on)")
    splits = []
    for index in range(count):
        # One generator per split, classes in sorted order: the splits are a pure function of the listing and seed.
        rng = np.random.default_rng([seed, index])
        parts: dict[str, list[str]] = {p: [] for p in SPLIT_PARTS}
        for c in sorted(by_class):
            keys = sorted(by_class[c])
            drawn = [keys[i] for i in rng.permutation(len(keys))]
            train = drawn[:train_per_class]
            n_val = held_out(train, val_fraction)
            parts["val"] += train[:n_val]
            parts["train"] += train[n_val:]
            end = None if test_per_class is None else train_per_class + test_per_class
            parts["test"] += drawn[train_per_class:end]
        splits.append({p: sorted(v) for p, v in parts.items()})
    return splits


def hold_out(by_class: dict[str, list[str]], test: list[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """A fixed train/test split's one split: ``val_fraction`` of each class's training images held out (seeded)."""
    rng = np.random.default_rng([seed, 0])
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": sorted(test)}
    for c in sorted(by_class):
        keys = sorted(by_class[c])
        drawn = [keys[i] for i in rng.permutation(len(keys))]
        n_val = held_out(drawn, val_fraction)
        parts["val"] += drawn[:n_val]
        parts["train"] += drawn[n_val:]
    return {p: sorted(v) for p, v in parts.items()}


def physical(files: dict[str, SourceFile], first: dict[str, list[str]]) -> dict[str, list[SourceFile]]:
    """The stored splits: the first split's train, val and test, and ``rest`` for the images it leaves out."""
    out: dict[str, list[SourceFile]] = {p: [files[k] for k in first[p] if k in files] for p in SPLIT_PARTS}
    used = {k for p in SPLIT_PARTS for k in first[p]}
    rest = [f for k, f in sorted(files.items()) if k not in used]
    if rest:
        out[REST] = rest
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Listings


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _class_files(entries: list[tuple[str, int]], prefix: str, skipped: list[dict[str, str]]
                 ) -> dict[str, list[tuple[str, int]]]:
    """``<class>/<image>`` files under ``prefix`` (a path relative to the source root, "" or ending in /)."""
    by_class: dict[str, list[tuple[str, int]]] = {}
    for path, size in entries:
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix):].split("/")
        if len(parts) != 2:
            skipped.append({"path": path, "reason": "not in a class folder (<class>/<image>)"})
        elif not _is_image(parts[1]):
            skipped.append({"path": path, "reason": f"not an image file name ({', '.join(IMAGE_SUFFIXES)})"})
        else:
            by_class.setdefault(parts[0], []).append((path, size))
    return by_class


def _source_files(by_class: dict[str, list[tuple[str, int]]], classes: dict[str, int], key_prefix: str,
                  skipped: list[dict[str, str]]) -> dict[str, SourceFile]:
    """key -> SourceFile for class folders; a second file with the same stem is skipped, as prepare does."""
    files: dict[str, SourceFile] = {}
    for c in sorted(by_class):
        for path, size in by_class[c]:
            key = f"{key_prefix}{c}/{_stem(path.rsplit('/', 1)[-1])}"
            if key in files:
                skipped.append({"path": path, "reason": f"duplicate key {key} (same name, other extension)"})
                continue
            files[key] = SourceFile(key, path, size, classes[c], c)
    return files


def _single_root(entries: list[tuple[str, int]], marker: str) -> str:
    """The prefix under which ``marker`` (e.g. ``JPEGImages/``) sits: "" at the root or one unique folder path."""
    roots = {p[: p.index(marker)] for p, _ in entries if p.startswith(marker) or f"/{marker}" in p}
    roots = {r for r in roots if r == "" or r.endswith("/")}
    if len(roots) > 1:
        raise PrepareError(f"several {marker.rstrip('/')} folders under the source ({', '.join(sorted(roots))}): "
                           "pass the one to use as --src")
    return roots.pop() if roots else ""


def scan_caltech(cfg: TargetOptions, src: str, endpoint: str | None = None, region: str | None = None) -> Listing:
    """Caltech-101/256 (and root-level class folders): classes, the seeded splits, the files to store."""
    entries = storage.walk(src, endpoint, region)
    skipped: list[dict[str, str]] = []
    prefix = ""
    tops = {p.split("/", 1)[0] for p, _ in entries if "/" in p}
    if len(tops) == 1 and next(iter(tops)).endswith("_ObjectCategories"):
        prefix = next(iter(tops)) + "/"  # the archive's own top folder
    by_class = _class_files(entries, prefix, skipped)
    excluded = None
    if cfg.layout in BACKGROUND and cfg.background == "exclude":
        excluded = BACKGROUND[cfg.layout]
        by_class.pop(excluded, None)
    if not by_class:
        raise PrepareError(f"no class folders under {storage.join(src, prefix)}: expected <class>/<image>")
    classes = {c: i for i, c in enumerate(sorted(by_class))}
    files = _source_files(by_class, classes, "", skipped)
    train_n = cfg.train_per_class or CALTECH_TRAIN_PER_CLASS.get(cfg.layout)
    if train_n is None:
        raise PrepareError("root-level class folders need --train-per-class (or train/ and test/ folders)")
    test_n = cfg.test_per_class or CALTECH_TEST_PER_CLASS.get(cfg.layout)
    keys_by_class: dict[str, list[str]] = {}
    for f in files.values():
        keys_by_class.setdefault(f.wnid, []).append(f.key)
    splits = draw_splits(keys_by_class, train_n, test_n, cfg.val_fraction, cfg.seed, cfg.num_splits)
    target = {"layout": cfg.layout, "multilabel": False, "seed": cfg.seed, "train_per_class": train_n,
              "test_per_class": test_n, "val_fraction": cfg.val_fraction, "background": cfg.background,
              "excluded_class": excluded, "splits": splits}
    return Listing(classes, physical(files, splits[0]), skipped, "none", None, None, target)


def scan_folders(cfg: TargetOptions, src: str, endpoint: str | None = None, region: str | None = None) -> Listing:
    """ImageFolder-style trees: ``train/<class>`` + ``test/<class>`` (fixed split), else root-level class folders."""
    entries = storage.walk(src, endpoint, region)
    if not any(p.startswith("train/") for p, _ in entries):
        return scan_caltech(cfg, src, endpoint, region)
    skipped: list[dict[str, str]] = []
    train = _class_files(entries, "train/", skipped)
    test = _class_files(entries, "test/", skipped)
    skipped += [{"path": p, "reason": "outside train/ and test/"} for p, _ in entries
                if not p.startswith(("train/", "test/"))]
    if not test:
        raise PrepareError(f"{storage.join(src, 'train')} has no test/ beside it: add test/<class>/ folders, or "
                           "give root-level class folders and --train-per-class")
    classes = {c: i for i, c in enumerate(sorted(train))}
    for c in sorted(set(test) - set(train)):
        skipped += [{"path": p, "reason": f"class {c} has no training images"} for p, _ in test.pop(c)]
    files = _source_files(train, classes, "train/", skipped) | _source_files(test, classes, "test/", skipped)
    keys_by_class: dict[str, list[str]] = {}
    for f in files.values():
        if f.key.startswith("train/"):
            keys_by_class.setdefault(f.wnid, []).append(f.key)
    split = hold_out(keys_by_class, [k for k in files if k.startswith("test/")], cfg.val_fraction, cfg.seed)
    target = {"layout": "folders", "multilabel": False, "seed": cfg.seed, "val_fraction": cfg.val_fraction,
              "splits": [split]}
    return Listing(classes, physical(files, split), skipped, "none", None, None, target)


def parse_image_set(text: str, where: str) -> dict[str, int]:
    """An ImageSets/Main file: ``<id>`` per line (-> code 1) or ``<id> <code>`` with code 1, 0 or -1."""
    out = {}
    for n, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            code = int(tokens[1]) if len(tokens) > 1 else 1
        except ValueError:
            code = None
        if len(tokens) > 2 or code not in (1, 0, -1):
            raise PrepareError(f"{where} line {n}: expected '<image id>' or '<image id> <1|0|-1>', "
                               f"got {line.strip()!r}")
        out[tokens[0]] = code
    return out


def annotation_codes(xml: bytes, classes: Sequence[str], where: str) -> tuple[int, ...]:
    """Per-class codes of one VOC annotation: 1 if a non-difficult object of the class, 0 if only difficult, else -1."""
    try:
        objects = ET.fromstring(xml).findall("object")
    except ET.ParseError as exc:
        raise PrepareError(f"{where}: not a VOC annotation ({exc})") from None
    found: dict[str, int] = {}
    for obj in objects:
        name = (obj.findtext("name") or "").strip()
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        found[name] = max(found.get(name, 0), 0 if difficult else 1)
    return tuple(found.get(c, -1) for c in classes)


def scan_voc(cfg: TargetOptions, src: str, endpoint: str | None = None, region: str | None = None) -> Listing:
    """VOC-2007: the image sets, every image's per-class codes (ImageSets first, Annotations where those lack one)."""
    ep, rg = endpoint, region
    entries = storage.walk(src, ep, rg)
    root = _single_root(entries, "JPEGImages/")
    present = {p[len(root):]: (p, s) for p, s in entries if p.startswith(root)}
    main = "ImageSets/Main/"

    def raw(rel: str) -> bytes:
        return storage.read_bytes(storage.join(src, root + rel), ep, rg)

    def read(rel: str) -> str:
        return raw(rel).decode("utf-8-sig")

    missing = [s for s in VOC_SETS if f"{main}{s}.txt" not in present]
    if missing:
        raise PrepareError(f"{storage.join(src, root + main)} has no {', '.join(f'{s}.txt' for s in missing)}: "
                           "the VOC-2007 layout needs the train, val and test image sets (trainval and test archives)")
    ids = {s: list(parse_image_set(read(f"{main}{s}.txt"), f"{main}{s}.txt")) for s in VOC_SETS}
    # Class files: <class>_<set>.txt for the sets above (and trainval); their names are the classes.
    sets = (*VOC_SETS, "trainval")
    class_files = sorted(rel for rel in present if rel.startswith(main) and "/" not in rel[len(main):]
                         and "_" in rel and rel[len(main):-4].rsplit("_", 1)[1] in sets and rel.endswith(".txt"))
    classes = sorted({rel[len(main):-4].rsplit("_", 1)[0] for rel in class_files})
    codes: dict[str, dict[str, int]] = {}  # class -> id -> code
    for rel in class_files:
        c = rel[len(main):-4].rsplit("_", 1)[0]
        codes.setdefault(c, {}).update(parse_image_set(read(rel), rel))
    if not classes:  # no class files at all: the classes are the object names of the annotations
        names = set()
        for i in (i for s in VOC_SETS for i in ids[s]):
            if f"Annotations/{i}.xml" in present:
                names |= {(o.findtext("name") or "").strip() for o in ET.fromstring(raw(f"Annotations/{i}.xml"))
                          .findall("object")}
        classes = sorted(names - {""})
    if not classes:
        raise PrepareError(f"no classes under {storage.join(src, root)}: neither ImageSets/Main/<class>_<set>.txt "
                           "files nor objects in Annotations/")
    skipped: list[dict[str, str]] = []
    files: dict[str, list[SourceFile]] = {s: [] for s in VOC_SETS}
    seen: set[str] = set()
    for s in VOC_SETS:
        for i in ids[s]:
            image = f"JPEGImages/{i}.jpg"
            if image not in present:
                skipped.append({"path": root + image, "reason": f"listed in {main}{s}.txt but absent"})
                continue
            if i in seen:
                skipped.append({"path": root + image, "reason": f"listed in more than one image set ({s} again)"})
                continue
            row = [codes.get(c, {}).get(i) for c in classes]
            if None in row:
                xml = f"Annotations/{i}.xml"
                if xml not in present:
                    skipped.append({"path": root + image, "reason": f"no label for class {classes[row.index(None)]} "
                                    f"in {main} and no {xml}"})
                    continue
                derived = annotation_codes(raw(xml), classes, xml)
                row = [d if r is None else r for r, d in zip(row, derived)]
            seen.add(i)
            path, size = present[image]
            files[s].append(SourceFile(i, path, size, -1, "", targets=tuple(row)))
    split = {s: sorted(f.key for f in files[s]) for s in VOC_SETS}
    target = {"layout": "voc2007", "multilabel": True, "root": root, "splits": [split]}
    return Listing({c: n for n, c in enumerate(classes)}, files, skipped, "none", None, None, target)


SCANNERS = {"voc2007": scan_voc, "caltech101": scan_caltech, "caltech256": scan_caltech, "folders": scan_folders}


def scan_target(cfg: TargetOptions, src: str, endpoint: str | None = None, region: str | None = None) -> Listing:
    """The listing of a target source in its layout."""
    return SCANNERS[cfg.layout](cfg, src, endpoint, region)


# ---------------------------------------------------------------------------------------------------------------------
# Reading a target back


@dataclass(frozen=True)
class Labels:
    """Every stored image's labels: keys (sorted), single labels (-1 for multi-label data), per-class codes or None."""

    keys: np.ndarray
    labels: np.ndarray
    targets: np.ndarray | None  # (N, C) int8 VOC codes for multi-label data

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Row indices of ``keys`` (all of them must be stored)."""
        idx = np.searchsorted(self.keys, keys)
        if len(keys) and (np.any(idx >= len(self.keys)) or np.any(self.keys[np.minimum(idx, len(self.keys) - 1)]
                                                                   != np.asarray(keys))):
            raise PrepareError("some split keys are not stored")
        return idx


def target_of(manifest: Manifest) -> dict[str, Any]:
    """The manifest's target record (layout, split rule, the splits' keys); a one-line error if it has none."""
    target = manifest.options.get(TARGET_OPTION)
    if not isinstance(target, dict) or not target.get("splits"):
        raise PrepareError(f"manifest at {manifest.root} is not a transfer target (no options.{TARGET_OPTION}): "
                           "prepare it with pipeline.prepare --layout voc2007|caltech101|caltech256|folders")
    return target


def read_labels(manifest: Manifest, endpoint: str | None = None) -> Labels:
    """Keys, labels and (multi-label data) per-class codes of every stored image, read from the small columns."""
    multilabel = bool(target_of(manifest).get("multilabel"))
    columns = ["key", "label"] + (["targets"] if multilabel else [])
    keys, labels, targets = [], [], []
    for split in manifest.splits:
        for uri in manifest.shard_uris(split):
            table = read_table(uri, columns, endpoint)
            keys += table.column("key").to_pylist()
            labels += table.column("label").to_pylist()
            if multilabel:
                targets += table.column("targets").to_pylist()
    order = np.argsort(np.asarray(keys, dtype=str), kind="stable")
    return Labels(np.asarray(keys, dtype=str)[order], np.asarray(labels, np.int64)[order],
                  np.asarray(targets, np.int8).reshape(len(keys), -1)[order] if multilabel else None)


def split_rows(target: dict[str, Any], labels: Labels, index: int) -> dict[str, np.ndarray]:
    """Row indices (into ``labels``) of split ``index``'s train, val and test images that were stored."""
    stored = set(labels.keys.tolist())
    split = target["splits"][index]
    return {p: labels.rows([k for k in split[p] if k in stored]) for p in SPLIT_PARTS}
