"""VOC average precision and Caltech mean class recall against cases computed by hand (the working is in comments)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import (
    average_precision,
    average_precisions,
    class_recalls,
    mean_class_recall,
    precision_recall,
)

# Five images ranked by score: positive, negative, positive, negative, positive (3 positives).
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
GT = np.array([1, -1, 1, -1, 1])


def test_precision_recall_by_hand():
    # tp after each rank: 1 1 2 2 3; fp: 0 1 1 2 2
    # precision = tp / (tp + fp) = 1, 1/2, 2/3, 1/2, 3/5; recall = tp / 3 = 1/3, 1/3, 2/3, 2/3, 1
    prec, rec = precision_recall(SCORES, GT)
    np.testing.assert_allclose(prec, [1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(rec, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])


def test_voc2007_eleven_point_ap_by_hand():
    # Highest precision at recall >= t:
    #   t = 0, 0.1, 0.2, 0.3 (all ranks reach 1/3 >= t):      1        4 thresholds
    #   t = 0.4, 0.5, 0.6 (ranks 3-5, recall 2/3, 2/3, 1):      2/3      3 thresholds
    #   t = 0.7, 0.8, 0.9, 1.0 (rank 5 only, recall 1):         3/5      4 thresholds
    # AP = (4 * 1 + 3 * 2/3 + 4 * 3/5) / 11 = (4 + 2 + 2.4) / 11 = 8.4 / 11
    assert average_precision(SCORES, GT) == pytest.approx(8.4 / 11)


def test_area_ap_of_later_voc_years_by_hand():
    # Recall with 0 and 1 appended: 0, 1/3, 1/3, 2/3, 2/3, 1, 1; precision with 0 appended at both ends:
    # 0, 1, 1/2, 2/3, 1/2, 3/5, 0, made monotone from the right: 1, 1, 2/3, 2/3, 3/5, 3/5, 0.
    # Recall steps at 1/3, 2/3 and 1, each of width 1/3, with precision 1, 2/3, 3/5 there:
    # AP = 1/3 * (1 + 2/3 + 3/5) = 1/3 + 2/9 + 1/5 = 34/45
    assert average_precision(SCORES, GT, method="area") == pytest.approx(34 / 45)


def test_difficult_images_count_neither_way():
    # Ranked: difficult, positive, negative, positive. The difficult one leaves: positive, negative, positive
    # (2 positives): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # 11-point: t = 0 .. 0.5 (6 thresholds) -> 1; t = 0.6 .. 1 (5 thresholds) -> 2/3; AP = (6 + 10/3) / 11 = 28/33.
    scores, gt = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, -1, 1])
    assert average_precision(scores, gt) == pytest.approx(28 / 33)
    # Counted as a negative instead it would rank first as a false alarm: precision 0, 1/2, 1/3, 1/2 at recall
    # 0, 1/2, 1/2, 1: every threshold gets 1/2, AP = 1/2. The devkit's answer is not that.
    assert average_precision(scores, np.array([-1, 1, -1, 1])) == pytest.approx(0.5)
    # A difficult image is the same as no image at all.
    assert average_precision(scores[1:], gt[1:]) == pytest.approx(28 / 33)


def test_eleven_point_thresholds_are_exact_tenths():
    # 10 positives then 10 negatives below them, except that positives 4..10 rank below every negative:
    # recall reaches 3/10 at rank 3 with precision 1; above recall 0.3 precision is at most 10/20 = 1/2 (rank 20).
    # With t = 0.3 exactly, recall 0.3 reaches it: thresholds 0, .1, .2, .3 -> 1; .4 .. 1 (7 thresholds) -> the best
    # precision from rank 14 on, where recall 4/10 first appears: at rank 20 precision is 10/20 = 1/2, the highest
    # (rank 14: 4/14, rank 15: 5/15, ... rank 20: 10/20). AP = (4 * 1 + 7 * 1/2) / 11 = 7.5 / 11.
    gt = np.array([1, 1, 1] + [-1] * 10 + [1] * 7)
    scores = -np.arange(len(gt), dtype=float)
    assert average_precision(scores, gt) == pytest.approx(7.5 / 11)


def test_ties_keep_image_order():
    # Equal scores: the devkit's stable sort keeps image order, so a tied positive listed first ranks first.
    assert average_precision(np.array([1.0, 1.0]), np.array([1, -1])) == pytest.approx(1.0)
    # Negative first: precision 0 then 1/2 at recall 0 then 1: every threshold gets 1/2.
    assert average_precision(np.array([1.0, 1.0]), np.array([-1, 1])) == pytest.approx(0.5)


def test_per_class_ap_of_a_multi_label_matrix():
    # Column 0 is the case above (8.4/11); column 1 ranks its one positive first: AP 1.
    targets = np.stack([GT, np.array([1, -1, -1, 0, -1])], axis=1)
    scores = np.stack([SCORES, np.array([5.0, 4.0, 3.0, 9.0, 1.0])], axis=1)
    np.testing.assert_allclose(average_precisions(scores, targets), [8.4 / 11, 1.0])


@pytest.mark.parametrize("scores,gt,match", [
    (np.array([0.1, 0.2]), np.array([-1, 0]), "no positive"),
    (np.array([0.1, 0.2]), np.array([1, 2]), "1 \\(present\\)"),
    (np.array([0.1]), np.array([1, -1]), "one length"),
    (np.array([np.nan, 0.2]), np.array([1, -1]), "finite"),
])
def test_bad_input_is_refused(scores, gt, match):
    with pytest.raises(ValueError, match=match):
        average_precision(scores, gt)
    with pytest.raises(ValueError, match="AP method"):
        average_precision(SCORES, GT, method="auc")


def test_mean_class_recall_by_hand():
    # Class 0: 3 images, 2 right -> 2/3; class 1: 2 images, 1 right -> 1/2; class 2: 1 image, right -> 1.
    # Mean class recall = (2/3 + 1/2 + 1) / 3 = 13/18, while plain accuracy would be 4/6 = 2/3.
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 0, 2])
    np.testing.assert_allclose(class_recalls(predicted, labels, 3), [2 / 3, 1 / 2, 1])
    assert mean_class_recall(predicted, labels, 3) == pytest.approx(13 / 18)
    # A class absent from the test labels has no recall and does not drag the mean down.
    recalls = class_recalls(predicted, labels, 4)
    assert np.isnan(recalls[3])
    assert mean_class_recall(predicted, labels, 4) == pytest.approx(13 / 18)
    with pytest.raises(ValueError, match="labels must be in"):
        mean_class_recall(predicted, labels, 2)
