"""Figures and a summary table from finished runs (RUN/eval.json, predictions.jsonl, and the
optional RUN/online.json and RUN/budget.json written by `c2f eval`); file names are those of
trainers/rundir.py.

- accuracy_vs_gflops.png: mAP against mean GFLOPs per video (± std) for the run and the runs
  it is compared with (the shape of LiteEval Table 1 / AR-Net Fig. 3 as a plot).
- online_curve.png (when online.json exists): top-1 and mAP against mean GFLOPs for each K of
  LiteEval, Uniform-K and Seq-K (LiteEval Fig. 2).
- fine_usage_per_class.png: per class, the distribution over its test videos of the fraction
  of frames that used the finest view (LiteEval Fig. 4); classes sorted by median usage.
- decision_strips.png: per video, one cell per frame coloured by the method's decision
  (AR-Net Fig. 4, SoF-Net Fig. 4.2), with the video's labels and whether top-1 was right.
- budget.png (when budget.json exists): running mean cost against the per-video budget
  (C2F Fig. 2a).
- training_curves.png: train and validation loss and mAP per epoch (trainers/curves.py).
- summary.md: one table row per run.

Only matplotlib's object API with the Agg canvas is used, so no global backend is set.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from featstore.atomic import atomic_path, write_text
from trainers import rundir
from trainers.curves import plot_training_curves
from trainers.synthetic import TRUTH_FILE, load_truth

log = logging.getLogger(__name__)

#: classes shown at most in the usage plot (the lowest and highest by median usage)
MAX_CLASSES = 30
DECISION_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860",
                   "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]


@dataclass
class RunResult:
    """What the report reads from one run directory."""

    path: Path
    label: str
    config: dict[str, Any]
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    online: list[dict[str, Any]] | None
    budget: dict[str, Any] | None


def load_result(run: str | os.PathLike) -> RunResult:
    """Read a finished run (FileNotFoundError naming what is missing)."""
    files = rundir.RunDir(run)
    if not files.root.exists():
        raise FileNotFoundError(f"run directory {files.root} does not exist")
    if not files.root.is_dir():
        raise NotADirectoryError(f"{files.root} is a file, not a run directory")
    missing = [p.name for p in (files.config, files.eval, files.predictions) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{files.root} is not a finished run: missing "
                                f"{', '.join(missing)}")
    config = json.loads(files.config.read_text())
    summary = json.loads(files.eval.read_text())
    records = [json.loads(ln) for ln in files.predictions.read_text().splitlines() if ln.strip()]
    online, budget = (json.loads(p.read_text()) if p.exists() else None
                      for p in (files.output(rundir.ONLINE), files.output(rundir.BUDGET)))
    label = f"{config['method']} ({files.root.name})"
    return RunResult(files.root, label, config, summary, records, online, budget)


def save_figure(fig: Figure, path: Path) -> Path:
    """Draw `fig` with the Agg canvas and write it atomically as PNG to `path`."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_accuracy_vs_gflops(runs: list[RunResult], path: Path) -> Path:
    """mAP vs mean GFLOPs/video, one point (± std) per run; the first run is highlighted."""
    fig = Figure(figsize=(7, 4.8))
    ax = fig.add_subplot()
    for i, r in enumerate(runs):
        s = r.summary
        ax.errorbar(s["gflops_mean"], 100 * s["mAP"], xerr=s["gflops_std"], fmt="o",
                    ms=9 if i == 0 else 6, capsize=3, color=DECISION_COLORS[i % 10],
                    label=f"{r.label}: {100 * s['mAP']:.1f}% @ {s['gflops_mean']:.1f}")
    ax.set_xlabel("GFLOPs per video (mean ± std over test videos)")
    ax.set_ylabel("mAP (%)")
    ax.set_title("Accuracy vs computation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_online_curve(rows: list[dict[str, Any]], path: Path) -> Path:
    """Top-1 and mAP vs mean GFLOPs for each method of an online (budget K) evaluation."""
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for metric, ax in zip(("top1", "mAP"), axes):
        for i, m in enumerate(methods):
            pts = sorted((r["gflops"], 100 * r[metric], r["K"]) for r in rows if r["method"] == m)
            xs, ys, _ = zip(*pts)
            ax.plot(xs, ys, "o-", color=DECISION_COLORS[i % 10], label=m)
            for x, y, k in pts:
                ax.annotate(f"K={k}", (x, y), fontsize=7, textcoords="offset points",
                            xytext=(3, 3))
        ax.set_xlabel("GFLOPs per video (mean)")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Online recognition with a budget of K fine features")
    return save_figure(fig, path)


def _class_names(run: RunResult) -> list[str]:
    n = len(run.records[0]["scores"])
    return run.summary.get("classes") or [str(c) for c in range(n)]


def plot_fine_usage_per_class(run: RunResult, path: Path) -> Path:
    """Box plot per class of the per-video fraction of frames on the finest view."""
    names = _class_names(run)
    fine = run.summary["fine_view"]
    usage: dict[int, list[float]] = {}
    for r in run.records:
        frac = r["frames_used"].get(fine, 0.0) / r["length"]
        for c in r["labels"]:
            usage.setdefault(c, []).append(frac)
    order = sorted(usage, key=lambda c: (np.median(usage[c]), c))
    if len(order) > MAX_CLASSES:
        order = order[: MAX_CLASSES // 2] + order[-MAX_CLASSES // 2:]
    fig = Figure(figsize=(max(6.0, 0.45 * len(order) + 2), 4.8))
    ax = fig.add_subplot()
    ax.boxplot([usage[c] for c in order], showmeans=True)
    ax.set_xticks(range(1, len(order) + 1),
                  [f"{names[c]} (n={len(usage[c])})" for c in order], rotation=60,
                  ha="right", fontsize=8)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel(f"fraction of frames on '{fine}'")
    title = f"Fine-feature usage per class — {run.label}"
    if len(usage) > len(order):
        title += f" ({len(order)} of {len(usage)} classes: lowest and highest)"
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def pick_videos(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to n videos spread over classes: round-robin over classes, ids in order."""
    by_class: dict[int, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["id"]):
        by_class.setdefault(r["labels"][0] if r["labels"] else -1, []).append(r)
    picked, depth = [], 0
    while len(picked) < min(n, len(records)):
        for c in sorted(by_class):
            if depth < len(by_class[c]) and len(picked) < n:
                picked.append(by_class[c][depth])
        depth += 1
    return picked


def plot_decision_strips(run: RunResult, path: Path, videos: int = 12,
                         truth: dict[str, np.ndarray] | None = None) -> Path:
    """One row per video, one cell per frame, coloured by decision code; with `truth`
    (synthetic stores), a black tick marks the frames that carry class evidence."""
    names = _class_names(run)
    codes = {int(k): v for k, v in run.summary.get("decision_names", {}).items()}
    rows = pick_videos(run.records, videos)
    all_codes = sorted(set(codes) | {d for r in rows for d in r["decisions"] if d >= 0})
    index = {c: i for i, c in enumerate(all_codes)}
    t = max(r["length"] for r in rows)
    grid = np.full((len(rows), t), np.nan)
    for i, r in enumerate(rows):
        for j, d in enumerate(r["decisions"]):
            if d >= 0:
                grid[i, j] = index[d]
    cmap = ListedColormap([DECISION_COLORS[i % 10] for i in range(len(all_codes))]
                          ).with_extremes(bad="white")
    fig = Figure(figsize=(min(16.0, 3 + 0.22 * t), 0.9 + 0.42 * len(rows)))
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=-0.5,
              vmax=len(all_codes) - 0.5, interpolation="nearest")
    ax.set_yticks(range(len(rows)))
    labels = []
    for r in rows:
        right = bool(r["labels"]) and int(np.argmax(r["scores"])) in r["labels"]
        cls = ", ".join(names[c] for c in r["labels"])
        labels.append(f"{r['id']} [{cls}] {'✓' if right else '✗'} {r['gflops']:.0f} GF")
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xticks(np.arange(-0.5, t, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(rows), 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("frame")
    handles = [Patch(color=DECISION_COLORS[index[c] % 10], label=codes.get(c, str(c)))
               for c in all_codes]
    if truth:
        marks = [(j, i) for i, r in enumerate(rows) if r["id"] in truth
                 for j in np.flatnonzero(truth[r["id"]])]
        if marks:
            xs, ys = zip(*marks)
            handles.append(ax.scatter(xs, np.asarray(ys) + 0.28, marker="^", s=14, c="black",
                                      label="informative frame (truth)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
              title="decision")
    ax.set_title(f"Per-frame decisions — {run.label}", fontsize=10)
    return save_figure(fig, path)


def plot_budget(budget: dict[str, Any], path: Path) -> Path:
    """Running mean cost and the per-video budget over the stream of videos."""
    fig = Figure(figsize=(8, 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(budget["cost"]))
    ax.plot(x, budget["cost"], ".", ms=3, alpha=0.35, color="#8c8c8c", label="cost per video")
    ax.plot(x, budget["running_mean_cost"], color="#4c72b0", label="running mean cost")
    ax.plot(x, budget["budget"], "--", color="#c44e52", label="budget B")
    ax.set_xlabel("video (stream order)")
    ax.set_ylabel("GFLOPs per video")
    ax.set_title(f"Budget controller: top-1 {100 * budget['top1']:.1f}%, "
                 f"mean cost {budget['mean_cost']:.1f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _truth(run: RunResult) -> dict[str, np.ndarray] | None:
    """The synthetic store's informative-frame truth, when the run's store has one."""
    if not (Path(run.config["store"]) / TRUTH_FILE).exists():
        return None
    return load_truth(run.config["store"])


def summary_table(runs: list[RunResult]) -> str:
    """Markdown table, one row per run."""
    lines = ["| run | method | mAP | top-1 | GFLOPs/video | GFLOPs/frame | fine usage |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        s = r.summary
        lines.append(
            f"| {r.path.name} | {r.config['method']} | {100 * s['mAP']:.1f} | "
            f"{100 * s['top1']:.1f} | {s['gflops_mean']:.2f} ± {s['gflops_std']:.2f} | "
            f"{s['gflops_per_frame_mean']:.3f} | {s['fine_usage_mean']:.3f} ± "
            f"{s['fine_usage_std']:.3f} |")
    return "\n".join(lines) + "\n"


def make_report(run: str | os.PathLike, compare: list[str | os.PathLike] | None = None,
                out: str | os.PathLike | None = None) -> list[Path]:
    """Write the figures and summary.md for `run` (+ compared runs) to `out` (RUN/report)."""
    main = load_result(run)
    runs = [main] + [load_result(c) for c in compare or []]
    out = Path(out) if out else rundir.RunDir(main.path).report
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_accuracy_vs_gflops(runs, out / rundir.ACCURACY_FIGURE),
        plot_fine_usage_per_class(main, out / rundir.USAGE_FIGURE),
        plot_decision_strips(main, out / rundir.STRIPS_FIGURE, truth=_truth(main)),
    ]
    curves = plot_training_curves(main.path, out / rundir.CURVES_FIGURE)
    if curves is not None:
        written.append(curves)
    if main.online:
        written.append(plot_online_curve(main.online, out / rundir.ONLINE_FIGURE))
    if main.budget:
        written.append(plot_budget(main.budget, out / rundir.BUDGET_FIGURE))
    write_text(out / rundir.SUMMARY, summary_table(runs))
    written.append(out / rundir.SUMMARY)
    log.info("report for %s: %s", main.path, ", ".join(p.name for p in written))
    return written
