"""Online recognition under a budget of K fine features (LiteEval sec. 4.2.1, Fig. 2).

Frames arrive one by one. LiteEval must emit its prediction right after it has read the fine
feature for the K-th time (or at the end of a video that never reaches K), so K sets the
budget. Two baselines spend the same K fine features with the Uniform-fine classifier (a linear
per-frame classifier on fine features whose video score is the mean of its frames' softmax):
- Uniform-K: K frames uniformly spaced over the whole video (needs the video's length, so it is
  not really online: an upper reference, as in the paper);
- Seq-K: the first K frames in order.
Every row reports mAP, top-1 and mean GMACs per video ("GFLOPs") on the evaluated set; scores
are softmax probabilities so that predictions emitted at different times rank together.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainers.cost import module_gmacs
from trainers.evaluation import evaluating
from trainers.method import TrainState
from trainers.metrics import mean_average_precision, top1_accuracy


def uniform_positions(length: int, k: int) -> np.ndarray:
    """Indices of min(k, length) frames evenly spread over [0, length) (segment centres)."""
    k = min(k, length)
    return np.floor((np.arange(k) + 0.5) * length / k).astype(np.int64)


def emit_step(decisions: np.ndarray, length: int, k: int) -> tuple[int, int]:
    """(t, n) where LiteEval emits under budget K: the frame of the K-th fine read, or the last
    frame when fewer than K fine features were read; n = fine features read by then."""
    fine_at = np.flatnonzero(decisions[:length] == 1)
    if len(fine_at) >= k:
        return int(fine_at[k - 1]), k
    return length - 1, len(fine_at)


def _row(method: str, k: int, scores: list, targets: list, gflops: list, fine: list) -> dict:
    s, y = np.stack(scores), np.stack(targets)
    return {
        "method": method,
        "K": k,
        "mAP": mean_average_precision(s, y).map,
        "top1": top1_accuracy(s, y),
        "gflops": float(np.mean(gflops)),
        "fine_frames": float(np.mean(fine)),
    }


def online_curve(model, loader, ks: list[int]) -> list[dict]:
    """LiteEval, Uniform-K and Seq-K rows for every K in `ks` (see module doc).

    `model` is a trained trainers.liteeval.LiteEval built with baseline_head=True (its
    Uniform-fine head was trained on the same training videos, on detached fine features).
    `c2f eval RUN --online-budget K...` runs this (the LiteEval specs' ONLINE evaluation).
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"budgets K must be >= 1, got {ks}")
    head = getattr(model, "uniform_head", None)
    if head is None:
        raise ValueError("online_curve needs a LiteEval model trained with baseline_head=True")
    head_gmacs = module_gmacs(head, torch.zeros(1, head.in_features))
    per_coarse = model.coarse_gmacs + model.coarse_step_gmacs
    per_fine = model.fine_gmacs + model.fine_step_gmacs
    acc = {(m, k): ([], [], [], []) for m in ("liteeval", "uniform-k", "seq-k") for k in ks}
    with evaluating(model, loader) as batches:
        for batch in batches:
            out = model(batch, TrainState(training=False))
            steps = F.softmax(out.extras["step_logits"], dim=2).cpu().numpy()
            frame_logits = out.extras["uniform_frame_logits"].cpu()
            decisions = out.decisions.cpu().numpy()
            targets = batch.targets.cpu().numpy()
            for b, length in enumerate(batch.lengths.tolist()):
                for k in ks:
                    t, n = emit_step(decisions[b], length, k)
                    cost = (t + 1) * per_coarse + n * per_fine + model.classifier_gmacs
                    _add(acc[("liteeval", k)], steps[b, t], targets[b], cost, n)
                    for name, idx in (
                        ("uniform-k", uniform_positions(length, k)),
                        ("seq-k", np.arange(min(k, length))),
                    ):
                        score = F.softmax(frame_logits[b, idx], dim=1).mean(0).numpy()
                        cost = len(idx) * (model.fine_gmacs + head_gmacs)
                        _add(acc[(name, k)], score, targets[b], cost, len(idx))
    return [_row(m, k, *acc[(m, k)]) for (m, k) in acc]


def _add(bucket: tuple, score, target, cost: float, fine: int) -> None:
    for values, value in zip(bucket, (score, target, cost, fine)):
        values.append(value)
