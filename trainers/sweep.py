"""One run per value of a knob (e.g. LiteEval's gamma), collected into an accuracy/cost curve.

Each value trains into DIR/<knob>=<value>/ with the shared loop, so an interrupted sweep
resumes (finished runs are skipped by train itself). Results: DIR/sweep.csv (one row per
value: mAP, top-1, GFLOPs per video and per frame, fine usage) and DIR/curve.png (mAP vs
GFLOPs/video, points joined in knob order and labelled with the value).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainers.config import resolve_config
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


def run_name(key: str, value: str) -> str:
    """Directory name of one sweep point (characters unsafe in paths replaced)."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{key}={value}")


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
                              **{**flags, "out": str(out / run_name(knob, v))}) for v in values]
    for value, cfg in zip(values, configs):
        log.info("sweep %s: %s=%s -> %s", method, knob, value, cfg.out)
    runs = run_points(configs) if run_points else [train(cfg) for cfg in configs]
    rows = []
    for value, run in zip(values, runs):
        s = json.loads((run / "eval.json").read_text())
        rows.append({"value": value, "run": run.name, **{k: s[k] for k in COLUMNS[2:]}})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[knob if c == "value" else c for c in COLUMNS])
    writer.writeheader()
    for r in rows:
        writer.writerow({(knob if k == "value" else k): v for k, v in r.items()})
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".sweep.csv.tmp-{os.getpid()}"
    tmp.write_text(buf.getvalue())
    os.replace(tmp, out / "sweep.csv")
    plot_curve(rows, knob, method, out / "curve.png")
    return out / "sweep.csv"


def plot_curve(rows: list[dict[str, Any]], knob: str, method: str, path: Path) -> Path:
    """mAP vs GFLOPs/video, one labelled point per knob value, joined in knob order."""
    fig = Figure(figsize=(7, 4.8))
    FigureCanvasAgg(fig)
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
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path
