"""Names of every file of a training run (and of a sweep), as featstore/schema.py names a store's.

Kept in one module so the loop that writes a run, `c2f eval | report | sweep` and the reports
that read it cannot drift apart. docs/trainers.md describes what each file holds.

    RUN/config.json            resolved config (a re-run must match it)
    RUN/metrics.jsonl          one record per training step and per epoch
    RUN/splits.json            train / val / train-probe video ids (trainers/splits.py)
    RUN/checkpoints/last.pt    model + optimizer + RNG + progress, written every epoch
    RUN/checkpoints/best.pt    model of the epoch with the best validation mAP
    RUN/eval.json              test summary (the run is finished once this exists)
    RUN/predictions.jsonl      one test video per line
    RUN/evals/SPLIT-WHICH.json `c2f eval` of checkpoint WHICH on SPLIT
    RUN/online.json            `c2f eval --online-budget` rows
    RUN/budget.json            `c2f eval --budget` stream
    RUN/report/                figures and summary.md (trainers/report.py)
    RUN/ranks/rank-R-epoch-E.json   `c2f finetune`: steps and videos of rank R in epoch E
    RUN/export/VIEW.pth (+ .json)   `c2f finetune`: fine-tuned backbone in torchvision layout
                               and its provenance sidecar (trainers/export.py)
    RUN/ray/                   `c2f finetune` on Ray Train: Ray's own checkpoint storage
    SWEEP/KEY=VALUE/           one run per value; SWEEP/sweep.csv, SWEEP/curve.png
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SPLITS = "splits.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_SUFFIX = ".pt"
LAST = "last"
BEST = "best"
EVAL = "eval.json"
PREDICTIONS = "predictions.jsonl"
EVALS = "evals"
ONLINE = "online.json"
BUDGET = "budget.json"
REPORT = "report"
RANKS = "ranks"
EXPORT = "export"
EXPORT_SUFFIX = ".pth"
RAY = "ray"

# Files of RUN/report/.
ACCURACY_FIGURE = "accuracy_vs_gflops.png"
ONLINE_FIGURE = "online_curve.png"
USAGE_FIGURE = "fine_usage_per_class.png"
STRIPS_FIGURE = "decision_strips.png"
BUDGET_FIGURE = "budget.png"
SUMMARY = "summary.md"
CURVES_FIGURE = "training_curves.png"

# Files of a sweep directory.
SWEEP_TABLE = "sweep.csv"
SWEEP_FIGURE = "curve.png"


@dataclass(frozen=True)
class RunDir:
    """Paths of the files of the run rooted at `root`."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def splits(self) -> Path:
        return self.root / SPLITS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    def checkpoint(self, which: str) -> Path:
        """RUN/checkpoints/WHICH.pt (WHICH: "last" or "best")."""
        if which not in (LAST, BEST):
            raise ValueError(f"checkpoint must be {LAST!r} or {BEST!r}, got {which!r}")
        return self.checkpoints / f"{which}{CHECKPOINT_SUFFIX}"

    @property
    def eval(self) -> Path:
        return self.root / EVAL

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS

    def split_eval(self, split: str, which: str) -> Path:
        """RUN/evals/SPLIT-WHICH.json, written by `c2f eval RUN --split SPLIT --which WHICH`."""
        return self.root / EVALS / f"{split}-{which}.json"

    def output(self, name: str) -> Path:
        """RUN/NAME for a file named by this module (e.g. ONLINE, BUDGET)."""
        return self.root / name

    @property
    def report(self) -> Path:
        return self.root / REPORT

    def rank_record(self, rank: int, epoch: int) -> Path:
        """RUN/ranks/rank-R-epoch-E.json: what rank R trained on in epoch E (`c2f finetune`)."""
        return self.root / RANKS / f"rank-{rank}-epoch-{epoch}.json"

    def export(self, view: str) -> Path:
        """RUN/export/VIEW.pth: a fine-tuned backbone in torchvision layout."""
        return self.root / EXPORT / f"{view}{EXPORT_SUFFIX}"

    @property
    def ray(self) -> Path:
        return self.root / RAY

    def finished(self) -> bool:
        """A run is finished once its eval.json exists (written last, atomically)."""
        return self.eval.exists()


def sweep_point(sweep: str | os.PathLike[str], key: str, value: str) -> Path:
    """SWEEP/KEY=VALUE: the run directory of one sweep point (unsafe characters -> '_')."""
    return Path(sweep) / re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{key}={value}")


def config_differences(old: dict, new: dict, ignore: Collection[str] = ()) -> list[str]:
    """Keys whose values differ between two resolved configs; nested dicts (method_config) are
    compared key by key and named `outer.inner`; `ignore` lists keys that may change."""
    diff = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key in ignore or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diff += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            diff.append(key)
    return diff


def claim(run: RunDir, resolved: dict, ignore: Collection[str] = (),
          read_old: Callable[[dict], dict] | None = None) -> bool:
    """Create RUN with `resolved` as its config, or check that it already holds that config
    (ValueError naming the differing keys); True when that run has finished.

    read_old: turns the stored config into today's form (keys added since then take the values
    that run trained with), so a run written before a key existed is compared on what it did."""
    if run.root.exists() and not run.root.is_dir():
        raise NotADirectoryError(f"{run.root} is a file, not a run directory")
    if run.config.exists():
        old = json.loads(run.config.read_text())
        diff = config_differences(read_old(old) if read_old else old, resolved, ignore)
        if diff:
            raise ValueError(f"{run.root} holds a run with a different config ({', '.join(diff)} "
                             "differ): choose another --out or delete it")
        return run.finished()
    # imported here: `featstore` loads h5py and pyarrow, and this module is read by `--help`
    from featstore.atomic import write_text

    run.checkpoints.mkdir(parents=True, exist_ok=True)
    write_text(run.config, json.dumps(resolved, indent=2) + "\n")
    return False
