"""The one way every evaluation walks a loader, and the one offline evaluation of a model.

`evaluating(model, loader)` puts the model in eval mode with gradients off, hands out the
loader's batches on the model's device, and restores the model's mode afterwards, also when
the caller stops early or raises. `evaluate` (the loop's validation and test measurement),
`trainers.online.online_curve` and C2F's `measure_training_errors` / `budget_run` all use it,
so they cannot disagree on device placement or train/eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from trainers.data import StoreInfo
from trainers.method import Batch, TrainState
from trainers.metrics import mean_average_precision, mean_cross_entropy, top1_accuracy


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class DeviceBatches:
    """Re-iterable view of `loader` whose batches are moved to `device`."""

    def __init__(self, loader: Iterable[Batch], device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield batch.to(self.device)


@contextmanager
def evaluating(model: torch.nn.Module, loader: Iterable[Batch]) -> Iterator[DeviceBatches]:
    """`with evaluating(model, loader) as batches:` — eval mode, no grad, batches on device."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield DeviceBatches(loader, model_device(model))
    finally:
        model.train(was_training)


def evaluate(model: torch.nn.Module, loader: Iterable[Batch], info: StoreInfo,
             state: TrainState) -> dict[str, Any]:
    """Accuracy and cost of `model` over `loader`; the one place every method is measured.

    Scores are the softmax of the method's logits. Returns mAP, top1, classes_skipped, GFLOPs
    per video and per frame (mean, std), fine usage per video (frames on the finest required
    view / length; mean, std), mean frames per view, decision_names, and `records`: one dict
    per video (id, labels, scores, gflops, length, frames_used, decisions).
    """
    was_state = state.training
    state.training = False
    finest = tuple(model.required_views)[-1]
    records, all_scores, all_targets, names = [], [], [], {}
    try:
        with evaluating(model, loader) as batches:
            for batch in batches:
                out = model(batch, state)
                scores = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()
                targets = batch.targets.cpu().numpy()
                gflops = out.gflops.detach().double().cpu().numpy()
                used = {v: f.detach().cpu().numpy() for v, f in out.frames_used.items()}
                decisions = out.decisions.cpu().numpy()
                names.update(out.decision_names)
                for i, vid in enumerate(batch.video_ids):
                    n = int(batch.lengths[i])
                    records.append({
                        "id": vid,
                        "labels": [int(c) for c in np.flatnonzero(targets[i])],
                        "scores": [round(float(s), 6) for s in scores[i]],
                        "gflops": float(gflops[i]),
                        "length": n,
                        "frames_used": {v: float(f[i]) for v, f in used.items()},
                        "decisions": [int(d) for d in decisions[i, :n]],
                    })
                all_scores.append(scores)
                all_targets.append(targets)
    finally:
        state.training = was_state
    if not records:
        raise ValueError("evaluation split is empty")
    return _summarise(records, np.concatenate(all_scores), np.concatenate(all_targets), finest,
                      names, info.classes)


def _summarise(records: list[dict[str, Any]], scores: np.ndarray, targets: np.ndarray,
               finest: str, names: dict[int, str], classes: list[str]) -> dict[str, Any]:
    ap = mean_average_precision(scores, targets)
    gflops = np.array([r["gflops"] for r in records])
    lengths = np.array([r["length"] for r in records], dtype=np.float64)
    fine = np.array([r["frames_used"].get(finest, 0.0) for r in records]) / lengths
    views = sorted({v for r in records for v in r["frames_used"]})
    return {
        "mAP": float(ap.map),
        "ce": mean_cross_entropy(scores, targets),
        "top1": float(top1_accuracy(scores, targets)),
        "classes_evaluated": int(ap.classes_evaluated),
        "classes_skipped": int(ap.classes_skipped),
        "videos": len(records),
        "gflops_mean": float(gflops.mean()),
        "gflops_std": float(gflops.std()),
        "gflops_per_frame_mean": float((gflops / lengths).mean()),
        "gflops_per_frame_std": float((gflops / lengths).std()),
        "fine_view": finest,
        "fine_usage_mean": float(fine.mean()),
        "fine_usage_std": float(fine.std()),
        "frames_used_mean": {v: float(np.mean([r["frames_used"].get(v, 0.0) for r in records]))
                             for v in views},
        "frames_mean": float(lengths.mean()),
        "decision_names": {str(k): v for k, v in sorted(names.items())},
        "classes": list(classes),
        "records": records,
    }


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation result without its per-video records."""
    return {k: v for k, v in result.items() if k != "records"}
