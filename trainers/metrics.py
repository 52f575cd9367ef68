"""Video-level recognition metrics: mAP as FCVID and ActivityNet report it, and top-1.

mAP is a ranking metric over the whole test set: for each class, rank all test videos by their
score for that class and compute the average precision (AP) of that ranking against the
videos' labels; mAP is the mean over classes. Videos may carry several labels (multi-label
aware). A class with no positive video in the evaluated set has no defined AP: it is skipped
and the number skipped is reported, so a small split cannot silently inflate or deflate mAP.

AP is the non-interpolated form, sum_n (R_n - R_{n-1}) * P_n over the distinct score
thresholds n (the same value as scikit-learn's `average_precision_score`). Tied scores enter
the ranking together, so the result never depends on the order of tied videos. ActivityNet's
official script uses the interpolated (precision-envelope) variant; pass `interpolated=True`
for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MAPResult:
    """mAP with the per-class APs behind it (None where a class had no positive)."""

    map: float
    per_class: list[float | None]
    classes_evaluated: int
    classes_skipped: int


def average_precision(scores: np.ndarray, targets: np.ndarray, interpolated: bool = False) -> float:
    """AP of one class: `scores` [N] ranks videos, `targets` [N] marks the positives.

    Raises ValueError when there is no positive, since AP is undefined then.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(targets).reshape(-1) > 0
    if scores.shape != positive.shape:
        raise ValueError(f"scores {scores.shape} and targets {positive.shape} differ in shape")
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise ValueError("average precision is undefined for a class with no positive")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    tp = np.cumsum(positive[order])
    seen = np.arange(1, len(scores) + 1)
    # one point per distinct threshold: the last index of each run of tied scores
    last_of_tie = np.r_[np.diff(sorted_scores) != 0, True]
    tp = tp[last_of_tie].astype(np.float64)
    precision = tp / seen[last_of_tie]
    recall = tp / n_pos
    if interpolated:
        precision = np.maximum.accumulate(precision[::-1])[::-1]
    recall_step = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_step * precision))


def mean_average_precision(
    scores: np.ndarray, targets: np.ndarray, interpolated: bool = False
) -> MAPResult:
    """mAP over classes of `scores` [N, C] against multi-hot `targets` [N, C]."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"expected matching [N, C] arrays, got {scores.shape}, {targets.shape}")
    per_class: list[float | None] = []
    for c in range(scores.shape[1]):
        if (targets[:, c] > 0).any():
            per_class.append(average_precision(scores[:, c], targets[:, c], interpolated))
        else:
            per_class.append(None)
    evaluated = [ap for ap in per_class if ap is not None]
    value = float(np.mean(evaluated)) if evaluated else float("nan")
    return MAPResult(value, per_class, len(evaluated), len(per_class) - len(evaluated))


def top1_accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of videos whose top-scored class is one of their labels.

    With tied top scores the lowest class index counts as the prediction (numpy's argmax), so
    a model that outputs constants cannot score above chance by the tie rule.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"expected matching [N, C] arrays, got {scores.shape}, {targets.shape}")
    if len(scores) == 0:
        return float("nan")
    top = scores.argmax(axis=1)
    return float(np.mean(targets[np.arange(len(scores)), top] > 0))


def mean_cross_entropy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over videos of -sum_c y_c/|y| log score_c: the loss a probability score pays (the
    validation loss drawn beside the training loss, so overfitting shows)."""
    weights = targets / np.clip(targets.sum(axis=1, keepdims=True), 1.0, None)
    return float(-(weights * np.log(np.clip(scores, 1e-8, None))).sum(axis=1).mean())
