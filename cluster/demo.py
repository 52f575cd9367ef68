"""The end-to-end demo behind `make demo`.

Part 1, the whole workflow: generated videos → shards → feature store → LiteEval and a
uniform-fine baseline → report PNGs. Part 2, the trainers on a generated feature store with
known structure (trainers/synthetic.py), where gating has something to learn: a LiteEval sweep
over gamma, a uniform-fine baseline, and the accuracy/cost curve.

It drives the same `c2f` commands a user types, in order, so the demo doubles as a check that
the README's workflow runs on a fresh machine. Everything is generated (videos from
`c2f synth`) and every backbone is RANDOM-INIT (no weights can be downloaded here): the
accuracy figures it prints show that the plumbing works, not what the methods reach with
ImageNet weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def demo_commands(out: Path, videos: int, classes: int, epochs: int) -> list[list[str]]:
    """The c2f command lines the demo runs, in order (also printed for the user to re-run)."""
    data, shards, store, runs = out / "videos", out / "shards", out / "store", out / "runs"
    common_train = ["--store", str(store), "--epochs", str(epochs), "--batch-size", "8"]
    gen_store, gen_runs = out / "generated-store", out / "generated-runs"
    gen_train = ["--store", str(gen_store), "--epochs", "6", "--lr", "5e-3",
                 "--set", "coarse_hidden=32", "--set", "fine_hidden=64"]
    return [
        ["synth", "--out", str(data), "--videos", str(videos), "--classes", str(classes)],
        ["shards", "--manifest", str(data / "manifest.parquet"), "--out", str(shards),
         "--fps", "1", "--videos-per-shard", "8"],
        ["extract", "--shards", str(shards), "--out", str(store),
         "--view", "coarse=mobilenet_v2@112", "--view", "fine=resnet101@224",
         "--threads", "1", "--batch-size", "32"],
        ["featstore", "info", str(store)],
        ["train", "uniform", "--out", str(runs / "uniform-fine"), *common_train,
         "--set", "view=fine"],
        ["train", "liteeval", "--out", str(runs / "liteeval"), *common_train],
        ["eval", str(runs / "liteeval"), "--online-budget", "1", "2", "4", "8"],
        ["report", str(runs / "liteeval"), "--compare", str(runs / "uniform-fine")],
        ["synthetic", str(gen_store), "--videos", "400", "--min-frames", "12",
         "--max-frames", "24", "--seed", "1"],
        ["train", "uniform", "--out", str(gen_runs / "uniform-fine"), "--store", str(gen_store),
         "--epochs", "6", "--lr", "5e-3", "--set", "view=fine"],
        ["sweep", "liteeval", "--out", str(gen_runs / "liteeval-gamma"),
         "--knob", "gamma=0.05,0.3,0.8", *gen_train],
        ["report", str(gen_runs / "liteeval-gamma" / "gamma=0.3"), "--compare",
         str(gen_runs / "uniform-fine")],
    ]


def run_demo(c2f: Callable[[list[str]], int], out: Path, videos: int = 24, classes: int = 4,
             epochs: int = 15) -> int:
    """Run every demo step with `c2f` (the CLI's entry point, `cluster.cli.main`, passed in so
    this module does not import the CLI that imports it); stop at the first step that fails
    and return its exit code."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for argv in demo_commands(out, videos, classes, epochs):
        log.info("demo step: c2f %s", " ".join(argv))
        code = c2f(argv)
        if code != 0:
            log.error("demo step failed with exit code %d: c2f %s", code, " ".join(argv))
            return code
    log.info("demo finished. Figures:")
    log.info("  %s (workflow on generated videos; backbones were RANDOM-INIT, so its accuracies "
             "show plumbing, not skill)", out / "runs" / "liteeval" / "report")
    log.info("  %s and %s (trainers on a generated feature store)",
             out / "generated-runs" / "liteeval-gamma" / "curve.png",
             out / "generated-runs" / "liteeval-gamma" / "gamma=0.3" / "report")
    return 0
