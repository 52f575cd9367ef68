"""The shared loop, loader, config and accounting, on a generated synthetic feature store
(trainers.synthetic: real HDF5 store written with featstore, random prototypes + noise)."""

import json
import logging

import numpy as np
import pytest
import torch

from backbones.flops import view_cost
from featstore import open_store
from trainers.config import resolve_config
from trainers.cost import frames_cost, module_gmacs, policy_cost, stages_cost
from trainers.data import make_loader, store_info
from trainers.synthetic import VIEWS, load_truth, make_synthetic_store
from trainers.train import stage_plan, train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("syn") / "store", videos=64,
                                frames=(12, 20), seed=3)


def _cfg(store, out, method="uniform", **flags):
    base = {"epochs": 6, "batch_size": 16, "lr": 1e-2}
    base.update(flags)
    sets = base.pop("sets", [])
    return resolve_config(method, store=str(store), out=str(out), sets=sets, **base)


def test_synthetic_store_is_deterministic_and_documented(store, tmp_path):
    again = make_synthetic_store(tmp_path / "again", videos=64, frames=(12, 20), seed=3)
    a, b = open_store(store), open_store(again)
    vid = a.video_ids("test")[0]
    assert np.array_equal(a.read(vid, "coarse"), b.read(vid, "coarse"))
    assert set(a.views) == set(VIEWS)
    assert a.view_attrs("fine")["backbone"] == "resnet101"
    truth = load_truth(store)[vid]
    assert len(truth) == len(a.read(vid, "fine")) and 0 < truth.sum() < len(truth)
    assert {a.split(v) for v in a.video_ids()} == {"train", "val", "test"}


def test_store_info_costs_come_from_the_named_backbones(store):
    info = store_info(open_store(store))
    assert info.num_classes == 8
    assert info.views["fine"].gmacs_per_frame == view_cost("resnet101", 224).gmacs
    assert info.views["coarse"].gmacs_per_frame == view_cost("mobilenet_v2", 112).gmacs
    fine = info.views["fine"]
    assert list(fine.stage_gmacs) == ["res1", "res2", "res3", "res4", "res5"]
    assert list(fine.stage_gmacs.values()) == sorted(fine.stage_gmacs.values())
    assert fine.stage_dims["res5"] == fine.dim


def test_loader_pads_masks_and_reshuffles_per_epoch(store):
    s = open_store(store)
    loader = make_loader(s, ["coarse", "fine"], "train", 8, shuffle=True, seed=1)
    loader.set_epoch(0)
    first = [b.video_ids for b in loader]
    loader.set_epoch(0)
    assert [b.video_ids for b in loader] == first
    loader.set_epoch(1)
    assert [b.video_ids for b in loader] != first
    loaded = next(iter(loader))
    # the loader copies the stored float16; Batch.to casts to float32, also on the same device
    assert loaded.features["fine"].dtype == torch.float16
    batch = loaded.to("cpu")
    assert batch.features["fine"].dtype == torch.float32
    assert batch.features["coarse"].dtype == torch.float32
    n = int(batch.lengths[0])
    assert batch.mask[0].sum() == n
    assert torch.all(batch.features["fine"][0, n:] == 0)
    assert torch.equal(batch.features["fine"][0, :n],
                       torch.from_numpy(s.read(batch.video_ids[0], "fine")).float())
    assert batch.to("cpu") is batch
    assert torch.all(batch.targets.sum(1) == 1)


def test_uniform_baseline_trains_well_above_chance(store, tmp_path):
    run = train(_cfg(store, tmp_path / "run"))
    result = json.loads((run / "eval.json").read_text())
    # chance mAP with 8 classes and 2 test videos per class is ~0.3
    print("uniform-fine test mAP", result["mAP"])
    assert result["mAP"] > 0.7
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [ln for ln in lines if ln["kind"] == "step"]
    assert steps and all(ln["data_time"] >= 0 and ln["compute_time"] > 0 for ln in steps)
    assert [ln["epoch"] for ln in lines if ln["kind"] == "epoch"] == list(range(6))
    assert (run / "checkpoints" / "best.pt").exists()
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-2
    report = run / "report"
    assert {"accuracy_vs_gflops.png", "fine_usage_per_class.png", "decision_strips.png",
            "summary.md"} <= {p.name for p in report.iterdir()}


def test_uniform_fine_gflops_are_frames_times_measured_view_cost(store, tmp_path):
    run = train(_cfg(store, tmp_path / "run", epochs=1))
    per_frame = view_cost("resnet101", 224).gmacs
    head = 64 * 8 / 1e9  # the linear classifier, one multiply-add per weight per frame
    records = [json.loads(ln) for ln in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == len(open_store(store).video_ids("test"))
    for r in records:
        assert r["frames_used"] == {"fine": r["length"]}
        assert r["gflops"] == pytest.approx(r["length"] * (per_frame + head), rel=1e-9)
        assert r["decisions"] == [0] * r["length"]
    summary = json.loads((run / "eval.json").read_text())
    assert summary["gflops_per_frame_mean"] == pytest.approx(per_frame + head)
    assert summary["fine_usage_mean"] == 1.0


def test_resume_gives_the_weights_of_an_uninterrupted_run(store, tmp_path):
    full = train(_cfg(store, tmp_path / "full", epochs=3))
    cut = _cfg(store, tmp_path / "cut", epochs=3)
    train(cut, stop_after_epochs=1)
    assert not (tmp_path / "cut" / "eval.json").exists()
    train(cut)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads(ln)["epoch"] for ln in
              (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
              if json.loads(ln)["kind"] == "epoch"]
    assert epochs == [0, 1, 2]


def test_finished_run_rerun_is_a_noop_that_says_so(store, tmp_path, caplog):
    cfg = _cfg(store, tmp_path / "run", epochs=1)
    run = train(cfg)
    before = (run / "eval.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="trainers.train"):
        train(cfg)
    assert "already finished" in caplog.text
    assert (run / "eval.json").stat().st_mtime_ns == before


def test_rerun_with_a_different_config_is_refused(store, tmp_path):
    train(_cfg(store, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError, match="lr"):
        train(_cfg(store, tmp_path / "run", epochs=1, lr=0.5))


def test_unknown_view_is_refused_before_training(store, tmp_path):
    cfg = _cfg(store, tmp_path / "run", sets=["view=nope"])
    with pytest.raises(ValueError, match="nope"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_method_config_range_is_checked_against_the_store(store, tmp_path):
    cfg = _cfg(store, tmp_path / "run", method="liteeval", sets=["gamma=1.5"])
    with pytest.raises(ValueError, match="gamma"):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sets,name", [(["bogus=1"], "bogus"), (["epochs=abc"], "epochs"),
                                       (["lr=fast"], "lr"), (["dropout=[1]"], "dropout")])
def test_bad_key_or_type_is_refused_naming_it(store, tmp_path, sets, name):
    with pytest.raises(ValueError, match=name):
        _cfg(store, tmp_path / "run", sets=sets)


def test_config_file_then_flags_then_sets(store, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('method = "lstm"\nepochs = 4\nlr = 0.5\n[method_config]\nhidden = 16\n')
    cfg = resolve_config(None, file=path, sets=["hidden=24", "lr=0.25"], store=str(store),
                         out=str(tmp_path / "r"), epochs=2)
    assert (cfg.method, cfg.epochs, cfg.lr) == ("lstm", 2, 0.25)
    assert cfg.method_config.hidden == 24 and cfg.method_config.kind == "lstm"


def test_stage_plan_follows_the_schedule_fractions():
    plan = stage_plan([("warmup", 0.25), ("joint", 0.5), ("finetune", 0.25)], 8)
    assert plan == ["warmup"] * 2 + ["joint"] * 4 + ["finetune"] * 2
    assert stage_plan(None, 3) == ["joint"] * 3


def test_missing_eval_split_is_refused_before_training(store, tmp_path):
    with pytest.raises(ValueError, match="nosuch"):
        train(_cfg(store, tmp_path / "run", sets=["eval_split=nosuch"]))
    assert not (tmp_path / "run").exists()


def test_synthetic_coarse_view_cannot_separate_paired_classes_but_fine_can(store, tmp_path):
    maps = {}
    for view in ("coarse", "fine"):
        run = train(_cfg(store, tmp_path / view, epochs=10, sets=[f"view={view}"]))
        maps[view] = json.loads((run / "eval.json").read_text())["mAP"]
    print("uniform mAP by view", maps)
    assert maps["fine"] > 0.8
    assert maps["coarse"] < maps["fine"] - 0.25


def test_module_gmacs_counts_multiply_adds_of_linear_and_lstm():
    assert module_gmacs(torch.nn.Linear(10, 5), torch.zeros(1, 10)) == pytest.approx(50e-9)
    lstm = torch.nn.LSTM(8, 4, batch_first=True)
    assert module_gmacs(lstm, torch.zeros(1, 1, 8)) == pytest.approx(4 * 4 * (8 + 4) * 1e-9)


def test_frames_and_stages_cost_use_the_measured_lookup(store):
    info = store_info(open_store(store))
    fine, coarse = info.views["fine"], info.views["coarse"]
    cost = frames_cost({"coarse": torch.tensor([10, 4]), "fine": torch.tensor([2, 0])}, info)
    expected = [10 * coarse.gmacs_per_frame + 2 * fine.gmacs_per_frame,
                4 * coarse.gmacs_per_frame]
    assert cost.tolist() == pytest.approx(expected)
    # 3 frames stopped after res2, 1 ran to res5: cumulative stage costs
    staged = stages_cost({"res2": torch.tensor([3]), "res5": torch.tensor([1])}, fine)
    assert staged.item() == pytest.approx(3 * fine.stage_gmacs["res2"] + fine.stage_gmacs["res5"])
    assert policy_cost(0.5, torch.tensor([4])).item() == 2.0
    with pytest.raises(ValueError, match="nope"):
        frames_cost({"nope": torch.tensor([1])}, info)
