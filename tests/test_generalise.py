"""The pieces that make default training honest and scale-free: learning-rate schedule, a
validation split carved from train when the store has none, feature standardisation fitted on
the training split (stored with the weights), and the realistic options of the generator."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from featstore import open_store
from trainers import liteeval, normalize
from trainers.baselines import Config as BaselineConfig
from trainers.config import RunConfig, config_from_dict, resolve_config
from trainers.data import make_loader, store_info
from trainers.method import TrainState
from trainers.schedule import lr_factor
from trainers.splits import carve_validation
from trainers.synthetic import REALISTIC, make_synthetic_store
from trainers.train import evaluate, load_run, train


@pytest.fixture(scope="module")
def scaled_stores(tmp_path_factory):
    """The same small realistic store written at feature scales 0.1 and 10."""
    root = tmp_path_factory.mktemp("scaled")
    opts = REALISTIC | {"classes": 4, "frames": (10, 16)}
    return {s: make_synthetic_store(root / f"x{s}", videos=40, seed=5, scale=s, **opts)
            for s in (0.1, 10.0)}


def test_warmup_then_cosine_or_steps():
    f = [lr_factor("cosine", s, 10, 5, warmup_epochs=1) for s in range(50)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[9:])) and f[-1] < 0.01
    m = [lr_factor("multistep", s, 10, 10, 0, milestones=(0.5, 0.8)) for s in range(100)]
    assert (m[49], m[50], m[79], m[80]) == (1.0, pytest.approx(0.1), pytest.approx(0.1),
                                            pytest.approx(0.01))
    assert lr_factor("constant", 99, 10, 10, warmup_epochs=5) == 1.0


def test_carved_validation_is_stratified_seeded_and_disjoint():
    ids = [f"v{i:03d}" for i in range(60)]
    labels = [[f"c{i % 3}"] for i in range(60)] 
    train, val = carve_validation(ids, labels, 0.2, seed=1)
    assert not set(train) & set(val) and sorted(train + val) == ids
    per_class = {c: sum(1 for v in val if labels[ids.index(v)][0] == c) for c in ("c0", "c1", "c2")}
    assert per_class == {"c0": 4, "c1": 4, "c2": 4}
    assert carve_validation(ids[::-1], labels[::-1], 0.2, seed=1)[1] == sorted(val, reverse=True)
    assert carve_validation(ids, labels, 0.2, seed=2)[1] != val


def test_generator_scale_and_splits(scaled_stores):
    small, large = (open_store(scaled_stores[s]) for s in (0.1, 10.0))
    assert not small.video_ids("val") and small.video_ids("test")
    vid = small.video_ids("train")[0]
    a, b = small.read_views(vid, ["fine"])["fine"], large.read_views(vid, ["fine"])["fine"]
    np.testing.assert_allclose(100 * a.astype(np.float32), b.astype(np.float32), rtol=2e-3,
                               atol=0.05)


def test_standardised_features_make_feature_scale_irrelevant(scaled_stores):
    outputs = []
    for scale in (0.1, 10.0):
        store = open_store(scaled_stores[scale])
        info = store_info(store)
        torch.manual_seed(0)
        model = liteeval.build(liteeval.Config(coarse_hidden=8, fine_hidden=16), info)
        loader = make_loader(store, model.required_views, "train", 8, False)
        normalize.attach(model, info, loader)
        batch = next(iter(loader)).to("cpu")
        seen = normalize.apply(model, batch).features["fine"][batch.mask]
        assert seen.mean().abs() < 0.1 and (seen.std() - 1).abs() < 0.1
        model.eval()
        outputs.append(model(batch, TrainState(training=False)).logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-2, atol=1e-2)


def test_run_without_val_split_validates_on_carved_videos_and_keeps_its_norm(scaled_stores,
                                                                             tmp_path):
    cfg = resolve_config("uniform", sets=["view=fine", "epochs=2", "batch_size=8",
                                          "val_fraction=0.25"],
                         store=str(scaled_stores[10.0]), out=str(tmp_path / "run"))
    run = train(cfg)
    roles = json.loads((run / "splits.json").read_text())
    assert roles["val"] and not set(roles["val"]) & set(roles["train"])
    assert "carved" in roles["val_source"] and set(roles["probe"]) <= set(roles["train"])
    epochs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in epochs if r["kind"] == "step"]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert all(k in epochs[-1] for k in ("train_mAP", "train_ce", "val_ce", "val_mAP"))
    lrs = [r["lr"] for r in steps]
    assert lrs[0] < max(lrs) and lrs[-1] < max(lrs)  # warm-up, then decay
    assert (run / "report" / "training_curves.png").stat().st_size > 0
    _, model, store, info = load_run(run)
    _, std = model.feature_norm.stats(("fine", None))
    assert 5 < float(std.mean()) < 50  # fitted on features 10x the generator's unit scale
    again = json.loads((run / "eval.json").read_text())["mAP"]
    loader = make_loader(store, model.required_views, "test", 8, False)
    assert evaluate(model, loader, info, TrainState())["mAP"] == pytest.approx(again)


def test_old_run_configs_load_without_normalisation():
    old = RunConfig(method="uniform", store="s", out="o",
                    method_config=BaselineConfig()).to_dict()
    for key in ("normalize", "grad_clip", "schedule", "warmup_epochs", "optimizer"):
        old.pop(key)
    cfg = config_from_dict(old)
    assert (cfg.normalize, cfg.grad_clip, cfg.schedule) == (False, 0.0, "constant")


def test_cli_writes_a_realistic_store_at_a_given_scale(tmp_path, capsys):
    from cluster.cli import main

    path = tmp_path / "cli_store"
    assert main(["synthetic", str(path), "--realistic", "--videos", "48", "--classes", "4",
                 "--min-frames", "10", "--max-frames", "12", "--scale", "10"]) == 0
    assert "48 videos, 4 classes" in capsys.readouterr().out
    store = open_store(path)
    params = json.loads((path / "synthetic_truth.json").read_text())["params"]
    assert params["scale"] == 10.0 and params["with_val"] is False and params["classes"] == 4
    assert params["informative"] == REALISTIC["informative"] and not store.video_ids("val")
