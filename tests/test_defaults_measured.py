"""Measured (issue 8): Uniform, LiteEval and AR-Net trained with their default settings on
realistic generated stores whose features are 0.1x, 1x or 10x the usual scale.

What is asserted is the issue's "Measured, not assumed" list: defaults learn at every scale
(within 2 mAP points of each other); defaults are within 2 test-mAP points of the best of a
small learning-rate sweep (lr x 0.3, 1, 3); LiteEval is within 2 points of Uniform-fine at no
more than 40% of its GFLOPs; LiteEval's fine usage rises with gamma; AR-Net's learned policy
beats its random policy and does not collapse onto one view; no run's test mAP is more than
10 points below its validation mAP (validation carved from train: these stores have no val
split). Every test prints its figures (run with -s to see them).

Stores: trainers.synthetic REALISTIC (background-dominated videos, 15% class segments,
group-level coarse evidence, a per-video look, no val split), shrunk to 8 classes, 560 videos
(112 test: fewer made AR-Net's test mAP move by 4 points between equally good runs) and 20-32
frames to fit the budget; models are narrowed (hidden sizes), everything else is the method's
defaults. AR-Net reads views fine + coarse, the two-view setting in
which issue 8 saw its policy collapse. Runs are shared by the whole module (`runs`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainers.arnet import action_shares
from trainers.config import resolve_config
from trainers.methods import method_spec
from trainers.synthetic import REALISTIC, make_synthetic_store
from trainers.train import train

SCALES = (0.1, 1.0, 10.0)
LR_FACTORS = (0.3, 1.0, 3.0)
GAMMAS = (0.05, 0.3, 0.6)  # LiteEval's default gamma first
#: name -> (method, the sets that narrow it or pick its views; nothing else is changed)
METHODS = {
    "uniform": ("uniform", ("view=fine",)),
    "liteeval": ("liteeval", ("coarse_hidden=32", "fine_hidden=64")),
    "arnet": ("arnet", ("views=fine,coarse", "hidden=64")),
}
#: val_fraction=0.2 only sizes the carved validation set (88 videos instead of 44), so that the
#: best-epoch validation mAP is not mostly selection noise
VAL = "val_fraction=0.2"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[float, Path]:
    root = tmp_path_factory.mktemp("measured")
    opts = REALISTIC | {"classes": 8, "frames": (20, 32), "informative": 0.15}
    return {s: make_synthetic_store(root / f"x{s}", videos=560, seed=11, scale=s, **opts)
            for s in SCALES}


@pytest.fixture(scope="module")
def runs(stores, tmp_path_factory):
    """run(name, scale=1.0, *sets) -> eval.json + best validation mAP, trained once per module.

    `name` is a key of METHODS (or "random-policy"); sets come after the method's own."""
    root = tmp_path_factory.mktemp("measured_runs")
    done: dict[tuple, dict] = {}

    def run(name: str, scale: float = 1.0, *sets: str) -> dict:
        key = (name, scale, *sets)
        if key not in done:
            method, own = METHODS[name] if name in METHODS else (name, METHODS["arnet"][1])
            out = root / f"run{len(done):02d}"
            cfg = resolve_config(method, sets=[VAL, *own, *sets], store=str(stores[scale]),
                                 out=str(out))
            path = train(cfg)
            result = json.loads((path / "eval.json").read_text())
            epochs = [json.loads(ln) for ln in (path / "metrics.jsonl").read_text().splitlines()]
            result["best_val_mAP"] = max(r["val_mAP"] for r in epochs if r["kind"] == "epoch")
            result["run"], result["lr"] = path, cfg.lr
            done[key] = result
        return done[key]

    run.done = done
    return run


def show(label: str, r: dict) -> str:
    return (f"{label}: test mAP {100 * r['mAP']:.1f} (val {100 * r['best_val_mAP']:.1f}), "
            f"{r['gflops_mean']:.1f} GFLOPs/video, fine usage {r['fine_usage_mean']:.2f}")


#: seeds per scale. LiteEval's hard Gumbel gate turns the float16 rounding differences between
#: scales (standardisation makes the inputs otherwise equal; Uniform scores 72.0 at every scale)
#: into different decisions during training, as another seed would: one seed at 0.1x / 1x / 10x
#: gave 96.1 / 96.2 / 93.5, seeds 0-2 at 10x 93.5 / 96.9 / 96.6. So its scale claim is made on the
#: mean of three seeds (96.6 / 96.8 / 95.7); Uniform and AR-Net were within a point across
#: scales with one seed.
SCALE_SEEDS = {"liteeval": (0, 1, 2)}


@pytest.mark.parametrize("name", list(METHODS))
def test_defaults_learn_at_every_feature_scale(runs, name):
    seeds = SCALE_SEEDS.get(name, (0,))
    maps = []
    for s in SCALES:
        per_seed = [runs(name, s, *([f"seed={k}"] if k else [])) for k in seeds]
        for k, r in zip(seeds, per_seed):
            print(f"\n{show(f'{name}, defaults, features x{s}, seed {k}', r)}", end="")
        maps.append(sum(r["mAP"] for r in per_seed) / len(per_seed))
        print(f"\n{name}, features x{s}: mean test mAP {100 * maps[-1]:.1f} over seeds {seeds}",
              end="")
    assert max(maps) - min(maps) <= 0.02
    assert min(maps) > 0.5  # chance is about 1/8


@pytest.mark.parametrize("name", list(METHODS))
def test_defaults_within_two_points_of_a_learning_rate_sweep(runs, name):
    default_lr = dict(method_spec(METHODS[name][0]).run_defaults).get("lr", 1e-3)
    sweep = {f: runs(name, 1.0, *([f"lr={f * default_lr:g}"] if f != 1.0 else []))
             for f in LR_FACTORS}
    for f, r in sweep.items():
        label = f"{name}, lr {r['lr']:g} (x{f})"
        print(f"\n{show(label, r)}", end="")
    best = max(r["mAP"] for r in sweep.values())
    assert sweep[1.0]["mAP"] >= best - 0.02


def test_liteeval_within_two_points_of_uniform_fine_at_40_percent_of_its_gflops(runs):
    lite, uniform = runs("liteeval"), runs("uniform")
    share = lite["gflops_mean"] / uniform["gflops_mean"]
    print(f"\n{show('LiteEval', lite)}\n{show('Uniform-fine', uniform)}\nLiteEval at "
          f"{100 * share:.0f}% of Uniform-fine's GFLOPs")
    assert lite["mAP"] >= uniform["mAP"] - 0.02
    assert share <= 0.40


def test_liteeval_fine_usage_rises_with_gamma(runs):
    usage = {g: runs("liteeval", 1.0, *([f"gamma={g}"] if g != GAMMAS[0] else []))
             for g in GAMMAS}
    for g, r in usage.items():
        label = f"LiteEval, gamma {g}"
        print(f"\n{show(label, r)}", end="")
    fine = [usage[g]["fine_usage_mean"] for g in GAMMAS]
    assert fine == sorted(fine) and len(set(fine)) == len(fine)


def test_arnet_learned_policy_beats_random_and_uses_every_view(runs):
    """Random policy: same classifiers and defaults, actions drawn with the learned policy's
    own decision shares (trainers.arnet.action_shares), so it spends about the same compute."""
    learned = runs("arnet")
    lines = (learned["run"] / "predictions.jsonl").read_text().splitlines()
    skips = len(method_spec("arnet").default_config().skips)
    shares = action_shares([json.loads(ln)["decisions"] for ln in lines], 2 + skips)
    props = ",".join(f"{p:.4f}" for p in shares)
    random = runs("random-policy", 1.0, f"random_proportions={props}")
    view_share = {v: n / learned["frames_mean"] for v, n in learned["frames_used_mean"].items()}
    rounded = {v: round(s, 3) for v, s in view_share.items()}
    print(f"\n{show('AR-Net learned', learned)}, share of frames per view {rounded}, action "
          f"shares {[round(s, 3) for s in shares]}\n{show('AR-Net random policy', random)}")
    assert learned["mAP"] > random["mAP"] + 0.10
    assert set(view_share) == {"fine", "coarse"}
    assert min(view_share.values()) >= 0.05  # no view left unused (issue 8: fine usage 0.000)


def test_no_run_tests_more_than_10_points_below_its_validation(runs):
    """Every run of the three methods this module trained (at least the default runs).

    Not the random-policy baseline: it draws its actions anew at every evaluation, so its
    best-epoch validation mAP is the best of 10 random draws (measured: val 46.2, test 26.8)."""
    for name in METHODS:
        for s in SCALES:
            runs(name, s)
    checked = {k: r for k, r in runs.done.items() if k[0] in METHODS}
    print()
    for key, r in checked.items():
        print(f"{key}: val {100 * r['best_val_mAP']:.1f}, test {100 * r['mAP']:.1f}")
    assert all(r["best_val_mAP"] - r["mAP"] <= 0.10 for r in checked.values())
