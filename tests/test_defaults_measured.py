"""Measured: default settings train on stores whose features are 0.1x, 1x or 10x the usual
scale, and validation (carved from train: these stores have no val split) predicts test.

Stores: trainers.synthetic REALISTIC (background-dominated videos, short class segments,
group-level coarse evidence, a per-video look, no val split), shrunk to 8 classes and 24-40
frames to fit the test budget. Every run prints its figures (run with -s to see them).
"""

from __future__ import annotations

import json

import pytest

from trainers.config import resolve_config
from trainers.synthetic import REALISTIC, make_synthetic_store
from trainers.train import train

SCALES = (0.1, 1.0, 10.0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("measured")
    opts = REALISTIC | {"classes": 8, "frames": (24, 40), "informative": 0.15}
    return {s: make_synthetic_store(root / f"x{s}", videos=240, seed=11, scale=s, **opts)
            for s in SCALES}


def run_default(method: str, store, out, *sets: str) -> dict:
    """Train with the method's defaults (only the sets given) and return eval.json + val.

    val_fraction=0.2 only sizes the carved validation set (about 38 videos instead of 19), so
    that best-epoch validation mAP is not mostly selection noise."""
    cfg = resolve_config(method, sets=["val_fraction=0.2", *sets], store=str(store),
                         out=str(out))
    run = train(cfg)
    result = json.loads((run / "eval.json").read_text())
    epochs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    result["best_val_mAP"] = max(r["val_mAP"] for r in epochs if r["kind"] == "epoch")
    return result


@pytest.fixture(scope="module")
def uniform_runs(stores, tmp_path_factory):
    """Uniform-fine with its defaults at every scale, trained once for the module."""
    root = tmp_path_factory.mktemp("uniform_runs")
    return {s: run_default("uniform", stores[s], root / f"u{s}", "view=fine") for s in SCALES}


def test_uniform_defaults_learn_at_every_feature_scale(uniform_runs):
    results = uniform_runs
    for s, r in results.items():
        print(f"\nuniform-fine, defaults, features x{s}: test mAP {100 * r['mAP']:.1f}, "
              f"val mAP {100 * r['best_val_mAP']:.1f}")
    for s in (0.1, 10.0):
        assert abs(results[s]["mAP"] - results[1.0]["mAP"]) <= 0.02
    for r in results.values():
        assert r["mAP"] > 0.5  # chance is 1/8
        assert r["best_val_mAP"] - r["mAP"] <= 0.10


def test_liteeval_defaults_train_the_same_at_small_and_large_scale(stores, uniform_runs,
                                                                   tmp_path):
    uniform = uniform_runs[1.0]
    results = {}
    for s in (0.1, 10.0):
        r = results[s] = run_default("liteeval", stores[s], tmp_path / f"l{s}",
                                     "coarse_hidden=32", "fine_hidden=64", "gamma=0.3")
        share = r["gflops_mean"] / uniform["gflops_mean"]
        print(f"\nLiteEval, defaults, features x{s}: test mAP {100 * r['mAP']:.1f} (val "
              f"{100 * r['best_val_mAP']:.1f}) at {100 * share:.0f}% of uniform-fine's GFLOPs "
              f"(fine usage {r['fine_usage_mean']:.2f}); uniform-fine {100 * uniform['mAP']:.1f}")
        assert r["mAP"] > 0.5 and share <= 0.6  # chance is 1/8
    assert abs(results[0.1]["mAP"] - results[10.0]["mAP"]) <= 0.02
