"""mAP and top-1 against hand-computed cases (FCVID/ActivityNet protocol, see trainers.metrics)."""

import numpy as np
import pytest

from trainers.metrics import average_precision, mean_average_precision, top1_accuracy


def test_ap_of_a_ranking_by_hand():
    # positives at ranks 1 and 3: precisions 1/1 and 2/3
    ap = average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)


def test_perfect_ranking_has_ap_one():
    assert average_precision(np.array([0.1, 0.9, 0.8]), np.array([0, 1, 1])) == 1.0


def test_tied_scores_enter_together_whatever_their_order():
    # three tied at 0.5 (one positive): P = 1/3 at R = 0.5; then P = 2/4 at R = 1
    expected = 0.5 * (1 / 3) + 0.5 * (2 / 4)
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    assert average_precision(scores, np.array([1, 0, 0, 1])) == pytest.approx(expected)
    assert average_precision(scores, np.array([0, 0, 1, 1])) == pytest.approx(expected)


def test_interpolated_ap_uses_the_precision_envelope():
    scores, targets = np.array([0.9, 0.8, 0.7]), np.array([0, 1, 1])
    assert average_precision(scores, targets) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision(scores, targets, interpolated=True) == pytest.approx(2 / 3)


def test_ap_without_positive_is_refused():
    with pytest.raises(ValueError, match="no positive"):
        average_precision(np.array([0.2, 0.1]), np.array([0, 0]))


def test_map_is_multilabel_aware_and_skips_classes_without_positives():
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.3], [0.6, 0.1, 0.2]])
    targets = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    result = mean_average_precision(scores, targets)
    # class 0: the positive ranks first -> 1; class 1: positives rank 1, 2 -> 1;
    # class 2 has no positive: skipped and counted
    assert result.per_class == [1.0, 1.0, None]
    assert result.classes_evaluated == 2 and result.classes_skipped == 1
    assert result.map == 1.0


def test_map_averages_per_class_aps():
    scores = np.array([[0.9, 0.1], [0.8, 0.9], [0.1, 0.2]])
    targets = np.array([[0, 1], [1, 0], [1, 0]])
    # class 0: ranks 0.9(neg), 0.8(pos), 0.1(pos): (1/2 + 2/3) / 2; class 1: pos ranks 3rd: 1/3
    expected = ((1 / 2 + 2 / 3) / 2 + 1 / 3) / 2
    assert mean_average_precision(scores, targets).map == pytest.approx(expected)


def test_top1_counts_a_hit_when_the_top_class_is_any_label():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    targets = np.array([[0, 1, 1], [0, 0, 1], [1, 0, 1]])
    assert top1_accuracy(scores, targets) == pytest.approx(2 / 3)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
