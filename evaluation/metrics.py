"""Transfer benchmarks' metrics (Appendix B, Table 11): VOC average precision and Caltech mean class recall. numpy only.

- VOC-2007: per class, the 11-point interpolated average precision of the VOC-2007 devkit (``VOCevalcls.m``): the
  mean over recall thresholds t = 0, 0.1, ..., 1 of the highest precision at a recall of at least t (0 where none
  reaches t). Later VOC years (2010+, ``VOCap.m``) use the area under the precision-recall curve with precision made
  monotone from the right: ``method="area"``. Ground truth per image and class is VOC's ImageSets code: 1 present,
  -1 absent, 0 "difficult" (only difficult objects of the class); 0 counts neither as a hit nor as a false alarm,
  as in the devkit (there it keeps its place in the ranking but changes no count, which is the same as removing it).
  mAP is the mean of the 20 per-class APs.
- Caltech-101/256: mean class recall, the mean over classes of the fraction of a class's test images classified as
  that class (the diagonal of the row-normalised confusion matrix), so a large class weighs no more than a small one.

Ranking ties are broken by image order (a stable sort, as MATLAB's ``sort`` in the devkit).
"""

from __future__ import annotations

import numpy as np

AP_METHODS = ("11point", "area")
POSITIVE, DIFFICULT, NEGATIVE = 1, 0, -1  # VOC's ImageSets/Main/<class>_<set>.txt codes


def precision_recall(scores: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each ranked image (scores descending), difficult (0) images left out."""
    scores, gt = np.asarray(scores, np.float64), np.asarray(gt)
    if scores.shape != gt.shape or scores.ndim != 1:
        raise ValueError(f"scores and ground truth must be 1-D and of one length, got {scores.shape} and {gt.shape}")
    if not np.all(np.isin(gt, (POSITIVE, DIFFICULT, NEGATIVE))):
        raise ValueError("ground truth must be 1 (present), 0 (difficult) or -1 (absent)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    kept = gt != DIFFICULT
    scores, gt = scores[kept], gt[kept]
    npos = int(np.sum(gt == POSITIVE))
    if npos == 0:
        raise ValueError("no positive image: average precision is undefined")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(gt[order] == POSITIVE)
    fp = np.cumsum(gt[order] == NEGATIVE)
    return tp / (tp + fp), tp / npos


def average_precision(scores: np.ndarray, gt: np.ndarray, method: str = "11point") -> float:
    """One class's AP: VOC-2007's 11-point interpolation (``11point``) or VOC 2010+'s area under the curve (``area``)."""
    if method not in AP_METHODS:
        raise ValueError(f"unknown AP method {method!r}: choose one of {', '.join(AP_METHODS)}")
    prec, rec = precision_recall(scores, gt)
    if method == "11point":
        # t = i/10 exactly (not a running sum of 0.1): a recall of 3/10 reaches the threshold 0.3.
        return float(np.mean([prec[rec >= t].max(initial=0.0) for t in np.arange(11) / 10]))
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision made monotone from the right
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def average_precisions(scores: np.ndarray, targets: np.ndarray, method: str = "11point") -> np.ndarray:
    """Per-class AP of (N, C) scores against (N, C) VOC codes (1 / 0 difficult / -1): shape (C,)."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores and targets must both be (images, classes), got {scores.shape} and {targets.shape}")
    return np.array([average_precision(scores[:, c], targets[:, c], method) for c in range(scores.shape[1])])


def class_recalls(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class recall (C,): the fraction of each class's images predicted as that class; NaN for an absent class."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape or labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"need one prediction per label (at least one), got {predicted.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels[predicted == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / counts, np.nan)


def mean_class_recall(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Caltech's metric: per-class recall averaged over the classes present among the labels."""
    return float(np.nanmean(class_recalls(predicted, labels, num_classes)))
