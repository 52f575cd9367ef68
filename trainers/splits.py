"""Which videos the loop trains on, validates on, and watches for overfitting.

Why: a store without a validation split used to be validated on its training videos, so
best.pt was chosen on them and a run that had memorised its training set reported a high
"val mAP". Instead, a validation split is carved out of the training split: seeded, stratified
by label (every class keeps its share on both sides), of a configurable size, and recorded in
the run directory (RUN/splits.json) so that the run can be audited and resumed exactly.

The loop also evaluates a fixed sample of the training videos (the "train probe", as many as
the validation videos, at most `PROBE_MAX`) in evaluation mode every epoch, so that train and
validation curves of the same quantities can be drawn side by side.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.atomic import write_text
from trainers import rundir

log = logging.getLogger(__name__)

PROBE_MAX = 512


@dataclass(frozen=True)
class RunSplits:
    """Video ids of each role; `val_source` says where the validation videos came from."""

    train: list[str]
    val: list[str]
    probe: list[str]
    val_source: str

    def to_dict(self) -> dict:
        return {"val_source": self.val_source, "train": self.train, "val": self.val,
                "probe": self.probe}


def carve_validation(
    ids: list[str], labels: list[list[str]], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split `ids` into (train, val) with about `fraction` of each class in val.

    Stratified by the first label of each video (the primary class); a class with one video
    stays in train, every class with 2+ videos gives at least one. Seeded and independent of the
    order of `ids`.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    by_class: dict[str, list[str]] = defaultdict(list)
    for vid, labs in sorted(zip(ids, labels)):
        by_class[labs[0] if labs else ""].append(vid)
    rng = np.random.default_rng([seed, 7919])
    val: set[str] = set()
    for cls in sorted(by_class):
        members = by_class[cls]
        if len(members) < 2:
            continue
        take = min(len(members) - 1, max(1, round(fraction * len(members))))
        picked = rng.choice(len(members), size=take, replace=False)
        val.update(members[i] for i in picked)
    return [v for v in ids if v not in val], [v for v in ids if v in val]


def plan_splits(store, val_split: str, val_fraction: float, seed: int) -> RunSplits:
    """The store's own validation split when it has one, else one carved from train."""
    train_ids = list(store.video_ids("train"))
    given = list(store.video_ids(val_split)) if val_split else []
    if given:
        train, val, source = train_ids, given, f"store split {val_split!r}"
    else:
        train, val = carve_validation(train_ids, [list(store.labels(v)) for v in train_ids],
                                      val_fraction, seed)
        source = f"carved from train (val_fraction={val_fraction}, seed={seed})"
        log.info("store has no %r videos: validating on %d videos %s", val_split, len(val),
                 source)
    rng = np.random.default_rng([seed, 104729])
    size = min(len(train), len(val), PROBE_MAX)
    probe = sorted(train[i] for i in rng.choice(len(train), size=size, replace=False))
    return RunSplits(train=train, val=val, probe=probe, val_source=source)


def record(run: Path, splits: RunSplits) -> RunSplits:
    """Write RUN/splits.json, or read it back when the run already has one (a resumed run keeps
    the videos it started with)."""
    path = rundir.RunDir(run).splits
    if path.exists():
        d = json.loads(path.read_text())
        return RunSplits(train=d["train"], val=d["val"], probe=d["probe"],
                         val_source=d["val_source"])
    write_text(path, json.dumps(splits.to_dict()) + "\n")
    return splits


def restrict(loader, ids: list[str]):
    """The same loader over `ids` only (in the given order)."""
    return loader.select(ids)
