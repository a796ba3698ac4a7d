"""The ImageNet source tree as ``pipeline.prepare`` reads it: classes, labelled files per split, files left out.

    train/<wnid>/*.JPEG                          the classes are the sorted wnids of train/
    val/<wnid>/*.JPEG                            val in class folders, or
    val/ILSVRC2012_val_00000001.JPEG ...         val flat, labelled by LOC_val_solution.csv or by the devkit's
                                                 ground truth + a synset mapping (pipeline.prepare's docstring)

The label files are parsed here (``parse_loc_solution``, ``parse_synsets``, ``parse_ground_truth``); a flat val/
without ``val_labels`` is labelled by the first of ``LOC_val_solution.csv``,
``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` and ``ILSVRC2012_validation_ground_truth.txt``
found under the source root.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.shards import SPLITS, SourceFile

LOC_VAL_SOLUTION = "LOC_val_solution.csv"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_DATA = "ILSVRC2012_devkit_t12/data"
LABEL_FILE_NAMES = {LOC_VAL_SOLUTION, DEVKIT_GROUND_TRUTH, "meta.mat"}


class PrepareError(Exception):
    """A problem with the source data or the options; the message is one line."""


@dataclass
class Listing:
    """What the source holds: classes, candidate files per split, files left out, and how val is labelled."""

    classes: dict[str, int]
    files: dict[str, list[SourceFile]]
    skipped: list[dict[str, str]]
    val_layout: str
    val_labels: str | None  # the labels file of a flat val/ (relative to the source root when found there)
    val_synsets: str | None  # the synset mapping that file needed, if any
    target: dict[str, Any] = field(default_factory=dict)  # a transfer target's record (pipeline.targets)


def _read_text(uri: str, endpoint: str | None, region: str | None) -> str:
    return storage.read_bytes(uri, endpoint, region).decode("utf-8-sig")


def parse_loc_solution(text: str, where: str) -> dict[str, str]:
    """``LOC_val_solution.csv`` -> {image id: wnid} (the first token of PredictionString is the wnid)."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise PrepareError(f"{where}: expected the header 'ImageId,PredictionString'")
    labels = {}
    for n, row in enumerate(rows, start=2):
        if not row:
            continue
        tokens = row[1].split() if len(row) > 1 else []
        if not tokens:
            raise PrepareError(f"{where} line {n}: no wnid in PredictionString")
        labels[row[0].strip()] = tokens[0]
    return labels


def parse_synsets(data: bytes, where: str) -> list[str]:
    """Wnids in ILSVRC2012_ID order (index 0 = ID 1) from the devkit's meta.mat or a text file of one wnid per line."""
    if where.endswith(".mat"):
        try:
            import scipy.io
        except ImportError:
            raise PrepareError(
                f"reading {where} needs scipy: pip install scipy, or pass a text file of wnids"
            ) from None
        try:
            synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)["synsets"]
            pairs = {
                int(s.ILSVRC2012_ID): str(s.WNID)
                for s in np.atleast_1d(synsets)
                if int(getattr(s, "num_children", 0)) == 0
            }
        except Exception as exc:
            raise PrepareError(f"{where}: not a devkit meta.mat ({type(exc).__name__}: {exc})") from None
        if sorted(pairs) != list(range(1, len(pairs) + 1)):
            raise PrepareError(f"{where}: leaf ILSVRC2012_IDs are not 1..{len(pairs)}")
        return [pairs[i] for i in range(1, len(pairs) + 1)]
    wnids = [line.split()[0] for line in data.decode("utf-8-sig").splitlines() if line.strip()]
    if not wnids:
        raise PrepareError(f"{where}: no wnids")
    return wnids


def parse_ground_truth(text: str, synsets: list[str], where: str) -> dict[str, str]:
    """The devkit's ground truth (one 1-based ILSVRC2012_ID per line, in val image order) -> {image id: wnid}."""
    labels = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            class_id = int(line)
            wnid = synsets[class_id - 1]
            if class_id < 1:
                raise IndexError
        except (ValueError, IndexError):
            raise PrepareError(
                f"{where} line {n}: {line.strip()!r} is not an ILSVRC2012_ID in 1..{len(synsets)}"
            ) from None
        labels[f"ILSVRC2012_val_{n:08d}"] = wnid
    return labels



def _find_val_labels(
    src: str, present: set[str], val_labels: str | None, val_synsets: str | None, ep: str | None, rg: str | None
) -> tuple[dict[str, str], str, str | None]:
    """Labels of a flat val/, the labels file they came from and the synset mapping it needed (None for the CSV)."""
    labels_uri, synsets_uri, recorded = None, None, None
    if val_labels:
        labels_uri = recorded = val_labels
    else:
        for rel in (LOC_VAL_SOLUTION, f"{DEVKIT_DATA}/{DEVKIT_GROUND_TRUTH}", DEVKIT_GROUND_TRUTH):
            if rel in present:
                labels_uri, recorded = storage.join(src, rel), rel
                break
    if labels_uri is None:
        raise PrepareError(
            "val/ holds images outside class folders and no labels file was found: "
            f"pass --val-labels ({LOC_VAL_SOLUTION} or {DEVKIT_GROUND_TRUTH})"
        )
    text = _read_text(labels_uri, ep, rg)
    if text.lstrip().startswith("ImageId"):
        return parse_loc_solution(text, labels_uri), recorded, None
    if val_synsets:
        synsets_uri = val_synsets
    else:
        beside = labels_uri.rsplit("/", 1)[0] + "/meta.mat" if "/" in labels_uri else "meta.mat"
        for candidate in (beside, storage.join(src, DEVKIT_DATA, "meta.mat")):
            if storage.exists(candidate, ep, rg):
                synsets_uri = candidate
                break
    if synsets_uri is None:
        raise PrepareError(
            f"{labels_uri} holds ILSVRC2012_IDs: pass --val-synsets (meta.mat, or a text file of wnids in ID order)"
        )
    synsets = parse_synsets(storage.read_bytes(synsets_uri, ep, rg), synsets_uri)
    recorded_synsets = synsets_uri[len(src) + 1 :] if synsets_uri.startswith(src + "/") else synsets_uri
    return parse_ground_truth(text, synsets, labels_uri), recorded, recorded_synsets


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


def scan_source(
    src: str,
    *,
    val_labels: str | None = None,
    val_synsets: str | None = None,
    endpoint: str | None = None,
    region: str | None = None,
) -> Listing:
    """List the source tree: classes from train/, labelled candidate files per split, and the files left out.

    ``val_labels`` / ``val_synsets`` name the label files of a flat val/ (searched for under ``src`` when None).
    """
    entries = storage.walk(src, endpoint, region)
    present = {path for path, _ in entries}
    wnids = sorted({p.split("/")[1] for p in present if p.startswith("train/") and p.count("/") == 2})
    if not wnids:
        raise PrepareError(f"no class folders under {storage.join(src, 'train')}: expected train/<wnid>/<image>")
    classes = {w: i for i, w in enumerate(wnids)}
    files: dict[str, list[SourceFile]] = {s: [] for s in SPLITS}
    skipped: list[dict[str, str]] = []
    flat_val = [
        (p, n) for p, n in entries if p.startswith("val/") and p.count("/") == 1 and p[4:] not in LABEL_FILE_NAMES
    ]
    labels, val_labels_name, val_synsets_name = {}, None, None
    if flat_val:
        labels, val_labels_name, val_synsets_name = _find_val_labels(
            src, present, val_labels, val_synsets, endpoint, region
        )
    for split in SPLITS:  # pyarrow's listing leaves these out silently: name them, as every other skipped file
        skipped += [
            {"path": f"{split}/{rel}", "reason": reason}
            for rel, reason in storage.broken_links(storage.join(src, split))
        ]
    seen: set[str] = set()
    for path, size in entries:
        split, _, rest = path.partition("/")
        if split not in SPLITS or not rest:
            continue  # label files, devkit, test/ and anything else beside the splits
        parts = rest.split("/")
        if len(parts) == 2:
            wnid, name = parts
        elif len(parts) == 1 and split == "val":
            name = parts[0]
            if name in LABEL_FILE_NAMES:
                continue
            wnid = labels.get(_stem(name))
            if wnid is None:
                skipped.append({"path": path, "reason": f"no label for this image in {val_labels_name}"})
                continue
        else:
            skipped.append({"path": path, "reason": f"not in a class folder ({split}/<wnid>/<image>)"})
            continue
        if wnid not in classes:
            skipped.append({"path": path, "reason": f"class {wnid} is not among the training classes"})
            continue
        key = f"{split}/{wnid}/{_stem(name)}"
        if key in seen:
            skipped.append({"path": path, "reason": f"duplicate key {key} (same name, other extension)"})
            continue
        seen.add(key)
        files[split].append(SourceFile(key, path, size, classes[wnid], wnid))
    has_folders = any(f.path.count("/") == 2 for f in files["val"])
    layout = {(False, False): "none", (True, False): "folders", (False, True): "flat", (True, True): "mixed"}
    return Listing(classes, files, skipped, layout[(has_folders, bool(flat_val))], val_labels_name, val_synsets_name)
