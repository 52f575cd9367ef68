"""Train and validation curves of a run, so that overfitting is visible at a glance.

Reads the per-epoch records of RUN/metrics.jsonl: the training objective (`train_loss`), and
the same two measures on the train probe and on the validation videos, both in evaluation mode
(`train_ce`/`val_ce`: cross-entropy of the video scores; `train_mAP`/`val_mAP`), see
trainers/splits.py. A widening gap between the train and validation curves is memorisation;
the test mAP of best.pt (RUN/eval.json) is drawn as a marker at its epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from featstore.atomic import atomic_path
from trainers import rundir


def epoch_records(run: Path) -> list[dict]:
    """The run's {"kind": "epoch"} records, in epoch order."""
    path = rundir.RunDir(run).metrics
    if not path.exists():
        return []
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return sorted((r for r in recs if r.get("kind") == "epoch"), key=lambda r: r["epoch"])


def plot_training_curves(run: Path, path: Path) -> Path | None:
    """Loss and mAP per epoch, train vs validation (None when the run has no epoch records)."""
    recs = epoch_records(run)
    if not recs:
        return None
    epochs = [r["epoch"] + 1 for r in recs]
    fig = Figure(figsize=(10, 4))
    loss_ax, map_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in recs], "o-", label="training objective")
    for key, label in (("train_ce", "train probe CE (eval mode)"), ("val_ce", "validation CE")):
        if all(key in r for r in recs):
            loss_ax.plot(epochs, [r[key] for r in recs], "o-", label=label)
    if all("train_mAP" in r for r in recs):
        map_ax.plot(epochs, [100 * r["train_mAP"] for r in recs], "o-", label="train probe")
    map_ax.plot(epochs, [100 * r["val_mAP"] for r in recs], "o-", label="validation")
    eval_path = rundir.RunDir(run).eval
    best = rundir.RunDir(run).checkpoint(rundir.BEST)
    if eval_path.exists() and best.exists():
        test = json.loads(eval_path.read_text())["mAP"]
        best_epoch = max(recs, key=lambda r: r["val_mAP"])["epoch"] + 1
        map_ax.plot([best_epoch], [100 * test], "k*", ms=12, label=f"test (best.pt) {100 * test:.1f}")
    loss_ax.set_xlabel("epoch")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_ylabel("loss")
    map_ax.set_xlabel("epoch")
    map_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    map_ax.set_ylabel("mAP (%)")
    for ax in (loss_ax, map_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Train vs validation: a widening gap is overfitting")
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path
