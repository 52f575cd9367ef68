"""Measured: SoF-Net with its default settings on realistic generated stage-feature stores.

Stores: trainers.synthetic REALISTIC (background-dominated videos, a per-video look, no val
split; the fine view's res1..res5 features are the stage features), shrunk to 8 classes and
16-24 frames to fit the test budget, with the class evidence in `segments=2` short segments
(an action that recurs: what lets early termination, eq. 3.7, end a video before its last
frames), and half of the background easy (told apart at res1 already, as black, title or static
frames are by a real backbone's first stage; the other half stays as hard as before). Only the model sizes are set; every loop setting is SoF-Net's default
(trainers/methods.py SOFNET_RUN). Every test prints its figures (run with -s to see them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainers.config import resolve_config
from trainers.data import make_loader
from trainers.method import TrainState
from trainers.synthetic import REALISTIC, load_truth, make_synthetic_store
from trainers.train import evaluate, load_run, train

pytestmark = pytest.mark.slow  # five short training runs: ~33 s of CPU in all

SCALES = (0.1, 1.0, 10.0)
STORE = REALISTIC | {"classes": 8, "frames": (16, 24), "informative": 0.15, "segments": 2,
                     "easy_background": 0.5}
#: small policy modules and MLP; val_fraction 0.2 sizes the carved validation set (32 videos)
SETS = ("hidden=32", "embed=32", "mlp_hidden=64", "val_fraction=0.2")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[float, Path]:
    root = tmp_path_factory.mktemp("sofnet_stores")
    return {s: make_synthetic_store(root / f"x{s}", videos=200, seed=5, scale=s, **STORE)
            for s in SCALES}


def measure(store: Path, out: Path, *sets: str) -> dict[str, float]:
    """Train SoF-Net with the defaults (+ `sets`), then measure best.pt on the test split three
    ways: as trained (early termination on: the run's eval.json), without early termination,
    and with every frame through every stage (layer_skipping off)."""
    run = train(resolve_config("sofnet", sets=[*SETS, *sets], store=str(store), out=str(out)))
    epochs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    figures = {"val_mAP": max(r["val_mAP"] for r in epochs if r["kind"] == "epoch")}
    _, model, st, info = load_run(run, "best")
    loader = make_loader(st, model.required_views, "test", 32, False, 0, True)
    for name, early, skipping in (("", True, True), ("no_exit_", False, True),
                                  ("all_", False, False)):
        model.cfg.early_termination, model.cfg.layer_skipping = early, skipping
        result = evaluate(model, loader, info, TrainState(training=False))
        figures[name + "mAP"], figures[name + "gflops"] = result["mAP"], result["gflops_mean"]
        if name == "no_exit_":  # which frames the policy processes fully (decision code N)
            truth = load_truth(store)
            full = np.concatenate([np.asarray(r["decisions"]) == len(model.stages)
                                   for r in result["records"]])
            informative = np.concatenate([truth[r["id"]] for r in result["records"]])
            figures["processed_background"] = float(full[~informative].mean())
            figures["processed_informative"] = float(full[informative].mean())
    assert figures["mAP"] == json.loads((run / "eval.json").read_text())["mAP"]
    return figures


def show(label: str, r: dict[str, float]) -> None:
    print(f"\nSoF-Net {label}: test mAP {100 * r['mAP']:.1f} at {r['gflops']:.1f} GFLOPs/video "
          f"(val {100 * r['val_mAP']:.1f}); without early termination {100 * r['no_exit_mAP']:.1f}"
          f" at {r['no_exit_gflops']:.1f}; all stages {100 * r['all_mAP']:.1f} at "
          f"{r['all_gflops']:.1f}")


@pytest.fixture(scope="module")
def default_runs(stores, tmp_path_factory) -> dict[float, dict[str, float]]:
    root = tmp_path_factory.mktemp("sofnet_runs")
    return {s: measure(stores[s], root / f"d{s}") for s in SCALES}


def test_defaults_learn_at_every_feature_scale(default_runs):
    for s, r in default_runs.items():
        show(f"defaults, features x{s}", r)
        assert r["mAP"] > 0.6  # chance is 1/8
        assert r["val_mAP"] - r["mAP"] <= 0.10
    for s in (0.1, 10.0):
        assert abs(default_runs[s]["mAP"] - default_runs[1.0]["mAP"]) <= 0.02


def test_skipping_and_early_termination_cost_less_at_the_same_accuracy(default_runs):
    """Layer skipping + early termination against every frame through every stage (Table 4.4,
    first and last rows), and early termination alone (eq. 3.7 at rho 0.999): it may save
    little when the model is rarely that sure, but must not cost more than 2 mAP points."""
    for s, r in default_runs.items():
        saved = 1 - r["gflops"] / r["no_exit_gflops"]
        share = r["gflops"] / r["all_gflops"]
        print(f"\nfeatures x{s}: early termination saves {100 * saved:.1f}% of GFLOPs/video "
              f"(mAP {100 * (r['mAP'] - r['no_exit_mAP']):+.1f} points); SoF-Net costs "
              f"{100 * share:.0f}% of all stages (mAP {100 * (r['mAP'] - r['all_mAP']):+.1f})")
        assert r["mAP"] >= r["no_exit_mAP"] - 0.02
        assert share <= 0.65 and r["mAP"] >= r["all_mAP"] - 0.02


def test_policy_processes_informative_frames_more_than_background(default_runs):
    """The policy's job (Fig. 4.2): forward the frames that carry the class. The background it
    still forwards dilutes the mean logit of eq. 3.6, which is what keeps the prediction below
    rho = 0.999 (docs/trainers.md)."""
    for s, r in default_runs.items():
        print(f"\nfeatures x{s}: fully processed: {100 * r['processed_informative']:.0f}% of "
              f"informative frames, {100 * r['processed_background']:.0f}% of background frames")
        assert r["processed_informative"] > r["processed_background"] + 0.2


def test_defaults_within_two_points_of_an_lr_sweep(stores, default_runs, tmp_path):
    default = resolve_config("sofnet", store=str(stores[1.0]), out=str(tmp_path / "x")).lr
    results = {1.0: default_runs[1.0]}
    for factor in (0.3, 3.0):
        results[factor] = measure(stores[1.0], tmp_path / f"lr{factor}", f"lr={factor * default}")
    for factor, r in sorted(results.items()):
        show(f"lr {factor * default:g} ({factor}x the default)", r)
    best = max(r["mAP"] for r in results.values())
    assert results[1.0]["mAP"] >= best - 0.02
