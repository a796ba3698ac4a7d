"""Appendix B's classifier on stored descriptors: pool over Q, L2-normalise, fuse nets, fit linear SVMs, choose C.

- Pooling over the test scales Q: ``average`` (the paper's choice for VOC) or ``stack`` (Caltech) of the per-Q
  descriptors; the result is L2-normalised. Fusion of nets stacks their normalised descriptors (and normalises
  again, which only rescales: each net keeps an equal share).
- Single-label data (Caltech, folders): one-vs-rest linear SVMs (scikit-learn's ``LinearSVC``), the class of the
  highest score; C is the grid value with the best mean class recall on the held-out images, and the SVMs are then
  refitted on all training images (held-out ones included) and scored on the test images.
- Multi-label data (VOC): a binary linear SVM per class, trained on the images whose code for it is 1 or -1 (an image
  with only 'difficult' objects of the class is left out of that class's training, as it is of its AP); C is chosen
  by the mean AP on the held-out (val) images, the SVMs refitted on train + val and scored on test.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.metrics import average_precisions, class_recalls

POOLS = ("average", "stack")
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
MAX_ITER = 10_000


class FitError(ValueError):
    """Training data a classifier cannot be fitted on; one line."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def pool_scales(per_q: Sequence[np.ndarray], pool: str) -> np.ndarray:
    """One net's descriptors from its (N, D) descriptors at each Q: averaged or stacked over Q, L2-normalised."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}: choose one of {', '.join(POOLS)}")
    stacked = np.stack([np.asarray(f, np.float64) for f in per_q])
    pooled = stacked.mean(axis=0) if pool == "average" else np.concatenate(list(stacked), axis=1)
    return l2_normalise(pooled)


def fuse(descriptors: Sequence[np.ndarray]) -> np.ndarray:
    """Late fusion of nets: their (normalised) descriptors stacked side by side, L2-normalised."""
    return l2_normalise(np.concatenate([np.asarray(d, np.float64) for d in descriptors], axis=1))


@dataclass(frozen=True)
class Fit:
    """One split's result: the test metric (mAP or mean class recall), its per-class values, C and the val curve."""

    metric: float
    per_class: np.ndarray
    c: float
    val: dict[float, float]  # C -> held-out metric


def _svm(c: float):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=c, max_iter=MAX_ITER, random_state=0)


def _quiet_fit(model, x: np.ndarray, y: np.ndarray):
    with warnings.catch_warnings():
        # A tiny C on separable data can stop at max_iter; the held-out metric judges that C, not a warning.
        warnings.simplefilter("ignore", category=UserWarning)
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", category=ConvergenceWarning)
        return model.fit(x, y)


def _choose(cs: Sequence[float], score) -> tuple[float, dict[float, float]]:
    """The C with the best held-out score (the smaller C on a tie); one C is taken as it is."""
    if len(cs) == 1:
        return cs[0], {}
    val = {c: score(c) for c in cs}
    best = max(val.values())
    return min(c for c, v in val.items() if v == best), val


def fit_multiclass(x: np.ndarray, labels: np.ndarray, rows: dict[str, np.ndarray], num_classes: int,
                   cs: Sequence[float] = C_GRID) -> Fit:
    """One-vs-rest linear SVMs on ``rows['train']``, C by mean class recall on ``rows['val']``, refit, test."""
    train, val, test = rows["train"], rows["val"], rows["test"]
    if len(np.unique(labels[train])) < 2:
        raise FitError("the training images hold fewer than two classes")
    if len(test) == 0:
        raise FitError("the split has no test images")
    if len(cs) > 1 and len(val) == 0:
        raise FitError("no held-out images to choose C on: give one C, or hold some training images out")

    def recall(c: float) -> float:
        predicted = _quiet_fit(_svm(c), x[train], labels[train]).predict(x[val])
        return float(np.nanmean(class_recalls(predicted, labels[val], num_classes)))

    c, curve = _choose(cs, recall)
    both = np.concatenate([train, val])
    predicted = _quiet_fit(_svm(c), x[both], labels[both]).predict(x[test])
    per_class = class_recalls(predicted, labels[test], num_classes)
    return Fit(float(np.nanmean(per_class)), per_class, c, curve)


def _class_scores(x: np.ndarray, targets: np.ndarray, fit_rows: np.ndarray, score_rows: np.ndarray,
                  c: float) -> np.ndarray:
    """Scores (len(score_rows), C) of a binary SVM per class fitted on ``fit_rows`` (difficult ones left out)."""
    out = np.empty((len(score_rows), targets.shape[1]))
    for k in range(targets.shape[1]):
        codes = targets[fit_rows, k]
        keep = fit_rows[codes != 0]
        y = targets[keep, k] == 1
        if y.all() or not y.any():
            raise FitError(f"class {k} has {'no negative' if y.all() else 'no positive'} training image")
        out[:, k] = _quiet_fit(_svm(c), x[keep], y).decision_function(x[score_rows])
    return out


def fit_multilabel(x: np.ndarray, targets: np.ndarray, rows: dict[str, np.ndarray], cs: Sequence[float] = C_GRID,
                   ap_method: str = "11point") -> Fit:
    """A binary linear SVM per class on ``rows['train']``, C by mean AP on ``rows['val']``, refit, test APs."""
    train, val, test = rows["train"], rows["val"], rows["test"]
    if len(test) == 0:
        raise FitError("the split has no test images")
    if len(cs) > 1 and len(val) == 0:
        raise FitError("no held-out images to choose C on: give one C, or a val image set")

    def mean_ap(c: float) -> float:
        return float(np.mean(average_precisions(_class_scores(x, targets, train, val, c), targets[val], ap_method)))

    c, curve = _choose(cs, mean_ap)
    both = np.concatenate([train, val])
    aps = average_precisions(_class_scores(x, targets, both, test, c), targets[test], ap_method)
    return Fit(float(np.mean(aps)), aps, c, curve)
