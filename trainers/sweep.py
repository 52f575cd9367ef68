"""One run per value of a knob (e.g. LiteEval's gamma), collected into an accuracy/cost curve.

Each value trains into DIR/<knob>=<value>/ (trainers.rundir.sweep_point) with the shared
loop, so an interrupted sweep resumes (finished runs are skipped by train itself). Results: DIR/sweep.csv (one row per
value: mAP, top-1, GFLOPs per video and per frame, fine usage) and DIR/curve.png (mAP vs
GFLOPs/video, points joined in knob order and labelled with the value).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from featstore.atomic import write_text
from trainers import rundir
from trainers.config import resolve_config
from trainers.report import save_figure
from trainers.train import train

log = logging.getLogger(__name__)

COLUMNS = ["value", "run", "mAP", "top1", "gflops_mean", "gflops_std", "gflops_per_frame_mean",
           "fine_usage_mean", "fine_usage_std"]


def parse_knob(text: str) -> tuple[str, list[str]]:
    """'gamma=0.05,0.1,0.3' -> ('gamma', ['0.05', '0.1', '0.3'])."""
    key, sep, values = text.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not items:
        raise ValueError(f"--knob expects KEY=V1,V2,..., got {text!r}")
    return key.strip(), items


def sweep(
    method: str,
    out: str | os.PathLike,
    knob: str,
    values: list[str],
    sets: list[str] | None = None,
    file: str | os.PathLike | None = None,
    run_points: Callable[[list], list[Path]] | None = None,
    **flags: Any,
) -> Path:
    """Train METHOD once per knob value (flags/sets as for `c2f train`); returns sweep.csv.

    `run_points(configs) -> run dirs` trains the points elsewhere (cluster/sweep_ray.py: as
    Ray tasks); by default they are trained one after another in this process."""
    out = Path(out)
    configs = [resolve_config(method, file, list(sets or []) + [f"{knob}={v}"],
                              **{**flags, "out": str(rundir.sweep_point(out, knob, v))})
               for v in values]
    for value, cfg in zip(values, configs):
        log.info("sweep %s: %s=%s -> %s", method, knob, value, cfg.out)
    runs = run_points(configs) if run_points else [train(cfg) for cfg in configs]
    rows = []
    for value, run in zip(values, runs):
        s = json.loads(rundir.RunDir(run).eval.read_text())
        rows.append({"value": value, "run": run.name, **{k: s[k] for k in COLUMNS[2:]}})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[knob if c == "value" else c for c in COLUMNS])
    writer.writeheader()
    for r in rows:
        writer.writerow({(knob if k == "value" else k): v for k, v in r.items()})
    write_text(out / rundir.SWEEP_TABLE, buf.getvalue())
    plot_curve(rows, knob, method, out / rundir.SWEEP_FIGURE)
    return out / rundir.SWEEP_TABLE


def plot_curve(rows: list[dict[str, Any]], knob: str, method: str, path: Path) -> Path:
    """mAP vs GFLOPs/video, one labelled point per knob value, joined in knob order."""
    fig = Figure(figsize=(7, 4.8))
    ax = fig.add_subplot()
    xs = [r["gflops_mean"] for r in rows]
    ys = [100 * r["mAP"] for r in rows]
    ax.plot(xs, ys, "o-", color="#4c72b0")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(f"{knob}={r['value']}", (x, y), fontsize=8, textcoords="offset points",
                    xytext=(4, 4))
    ax.set_xlabel("GFLOPs per video (mean over test videos)")
    ax.set_ylabel("mAP (%)")
    ax.set_title(f"{method}: accuracy vs computation over {knob}")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
