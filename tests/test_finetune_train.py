"""End-to-end training: gradients, schedules, overfitting 8 videos, and the export that
`c2f extract --weights` loads back — on real shards of generated videos (no mocks)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from media import class_split_shards

from backbones.weights import file_sha256
from cluster.cli import main as c2f
from featstore import open_store
from pipeline.extract import parse_view
from trainers.checkpoint import load_checkpoint
from trainers.clips import ClipLoader, ClipSpec, shard_urls
from trainers.encoder import ClipEncoder, EndToEnd
from trainers.finetune import build_model, finetune
from trainers.finetune_config import resolve_finetune_config
from trainers.finetune_optim import lr_factor, param_groups
from trainers.method import TrainState
from trainers.methods import method_spec

STORED_FRAMES = 8


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory) -> Path:
    """12 videos of 4 classes: 2 train + 1 test video per class."""
    return class_split_shards(tmp_path_factory.mktemp("e2e_train"), videos=12, classes=4,
                              train_per_class=2, frames=STORED_FRAMES, seed=3,
                              videos_per_shard=6)


def test_gradients_reach_trained_backbones_and_not_frozen_ones():
    views = [parse_view("coarse=resnet18@32"), parse_view("fine=resnet18@32")]
    encoder = ClipEncoder(views, frozen=["coarse"])
    spec = method_spec("uniform-cf")
    cfg = spec.config_type()(kind="uniform", concat_view="coarse", view="fine")
    method = spec.build(cfg, encoder.store_info(["a", "b", "c"]))
    model = EndToEnd(encoder, method).train()
    coarse_bn = encoder.backbones["coarse"].bn1.running_mean.clone()
    clips = torch.randn(2, 3, 3, 32, 32)
    out, batch = model(clips, torch.eye(3)[[0, 2]], ["x", "y"], TrainState())
    assert batch.features["fine"].shape == (2, 3, 512) and batch.mask.all()
    method.loss(out, batch, TrainState())[0].backward()
    assert encoder.backbones["fine"].conv1.weight.grad.abs().sum() > 0
    assert method.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.backbones["coarse"].parameters())
    assert torch.equal(encoder.backbones["coarse"].bn1.running_mean, coarse_bn)  # eval BN
    groups = {g["name"]: g for g in param_groups(encoder, method, 0.1, 0.2, 5.0)}
    assert groups["backbone"]["lr"] == pytest.approx(0.02)
    assert groups["heads"]["lr"] == pytest.approx(0.5)
    fine = encoder.backbones["fine"]
    assert sum(p.numel() for p in groups["backbone"]["params"]) == sum(
        p.numel() for p in fine.parameters()) - sum(p.numel() for p in fine.fc.parameters())
    assert fine.fc.weight.grad is None  # the ImageNet classifier is not trained


def test_lr_factor_warms_up_then_follows_the_schedule():
    f = [lr_factor(s, 10, 5, 1.0, "cosine") for s in range(50)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert np.all(np.diff(f[10:]) < 0) and f[-1] < 0.01
    m = [lr_factor(s, 10, 5, 0.0, "multistep", [2, 4]) for s in (0, 19, 20, 39, 40)]
    assert m == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


@pytest.fixture(scope="module")
def overfit_run(small_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("overfit") / "run"
    cfg = resolve_finetune_config(
        "uniform", shards=small_shards, out=out, views=["fine=resnet18@32"], frames=4,
        batch_size=8, epochs=6, steps_per_epoch=4, optimizer="adamw", lr=1e-3,
        sets=["backbone_lr_mult=1", "head_lr_mult=1", "warmup_epochs=0.5", "val_split=train",
              "eval_split=train", "precise_bn_batches=1"])
    finetune(cfg)
    return out


def test_uniform_run_overfits_8_videos(overfit_run):
    records = [json.loads(ln) for ln in (overfit_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    result = json.loads((overfit_run / "eval.json").read_text())
    print(f"\noverfit 8 videos: loss {epochs[0]['train_loss']:.3f} -> "
          f"{epochs[-1]['train_loss']:.3f}, train top-1 {result['top1']:.3f}")
    assert len(steps) == 24 and all(e["steps"] == 4 for e in epochs)
    assert result["videos"] == 8 and result["top1"] == 1.0
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]


def test_export_loads_into_extract_and_reproduces_the_finetuned_features(
        overfit_run, small_shards, tmp_path):
    exported = overfit_run / "export" / "fine.pth"
    meta = json.loads((overfit_run / "export" / "fine.json").read_text())
    assert meta["sha256"] == file_sha256(exported) and meta["run"] == str(overfit_run)
    store_dir = tmp_path / "store"
    assert c2f(["extract", "--shards", str(small_shards), "--out", str(store_dir),
                "--view", "fine=resnet18@32", "--weights", f"fine={exported}",
                "--threads", "1", "--jpeg-decoder", "pillow", "--mode", "inprocess"]) == 0
    store = open_store(store_dir)
    attrs = store.view_attrs("fine")
    assert attrs["weights_sha256"] == meta["sha256"]
    assert attrs["weights_run"] == str(overfit_run)
    cfg = resolve_finetune_config(
        "uniform", shards=small_shards, out=overfit_run,
        views=["fine=resnet18@32"])
    model = build_model(cfg).model
    best = load_checkpoint(overfit_run / "checkpoints" / "best.pt")
    model.load_state_dict(best["model"])
    model.eval()
    loader = ClipLoader(shard_urls(small_shards), ClipSpec(STORED_FRAMES, (32,), False),
                        store.classes, "test", batch_size=4)
    with torch.no_grad():
        for clip in loader:
            batch = model.encode(clip.clips, clip.targets, clip.video_ids)
            for i, vid in enumerate(clip.video_ids):
                np.testing.assert_allclose(batch.features["fine"][i].numpy(),
                                           store.read_views(vid, ["fine"])["fine"],
                                           rtol=2e-3, atol=2e-3)


def _ray_cfg(shards: Path, out: Path, workers: int):
    return resolve_finetune_config(
        "uniform", shards=shards, out=out, views=["fine=resnet18@32"], frames=2, batch_size=4,
        epochs=2, steps_per_epoch=3, workers=workers, optimizer="adamw", lr=1e-3,
        freeze=["fine"], sets=["val_split=test", "eval_split=test", "precise_bn_batches=0",
                               "warmup_epochs=0", "head_lr_mult=1"])


def _step_losses(run: Path) -> list[float]:
    """Loss of the global batch at each step (2 workers: mean over the ranks)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "step"]


@pytest.mark.slow
def test_two_ray_train_workers_split_shards_and_follow_one_worker(ray_local, small_shards,
                                                                  tmp_path):
    one = finetune(_ray_cfg(small_shards, tmp_path / "one", 1))
    two = finetune(_ray_cfg(small_shards, tmp_path / "two", 2))
    for epoch in (0, 1):
        ranks = [json.loads((two / "ranks" / f"rank-{r}-epoch-{epoch}.json").read_text())
                 for r in (0, 1)]
        assert [r["steps"] for r in ranks] == [3, 3] and all(r["world"] == 2 for r in ranks)
        assert not set(ranks[0]["videos"]) & set(ranks[1]["videos"])
    assert (two / "eval.json").exists() and (two / "export" / "fine.pth").exists()
    a, b = _step_losses(one), _step_losses(two)
    print(f"\nstep losses, 1 worker {np.round(a, 3)} vs 2 workers {np.round(b, 3)}")
    # same init, same global batch, different draws of clips: the curves agree in level (the
    # backbone is frozen so that BatchNorm over 2-clip rank batches does not enter)
    assert len(a) == len(b) == 6
    assert np.mean(b) == pytest.approx(np.mean(a), rel=0.2)


@pytest.fixture(scope="module")
def detail_shards(tmp_path_factory) -> Path:
    """24 videos of 4 classes whose pairs differ only in fine stripes (pipeline/synth.py);
    4 train + 2 test videos per class, stored at 48 px so the stripes survive."""
    return class_split_shards(tmp_path_factory.mktemp("e2e_detail"), videos=24, classes=4,
                              train_per_class=4, frames=STORED_FRAMES)


@pytest.mark.slow
def test_end_to_end_uniform_beats_uniform_on_frozen_random_init_features(detail_shards,
                                                                          tmp_path):
    results = {}
    for name, freeze in (("end-to-end", []), ("frozen", ["fine"])):
        cfg = resolve_finetune_config(
            "uniform", shards=detail_shards, out=tmp_path / name, views=["fine=resnet18@48"],
            frames=4, batch_size=8, epochs=4, steps_per_epoch=4, freeze=freeze,
            optimizer="adamw", lr=1e-3,
            sets=["head_lr_mult=1", "backbone_lr_mult=1", "warmup_epochs=0.5",
                  "val_split=train", "precise_bn_batches=2"])
        results[name] = json.loads((finetune(cfg) / "eval.json").read_text())
    e2e, frozen = results["end-to-end"], results["frozen"]
    print(f"\nUniform, resnet18@48 random init, same steps, 8 test videos: end-to-end mAP "
          f"{e2e['mAP']:.3f} top-1 {e2e['top1']:.3f} | frozen mAP {frozen['mAP']:.3f} top-1 "
          f"{frozen['top1']:.3f} | GFLOPs/video {e2e['gflops_mean']:.3f} both")
    assert e2e["gflops_mean"] == pytest.approx(frozen["gflops_mean"])
    assert e2e["mAP"] > frozen["mAP"] + 0.15 and e2e["top1"] > frozen["top1"]


@pytest.mark.slow
def test_killed_ray_train_worker_resumes_from_the_last_checkpoint(ray_local, small_shards,
                                                                  tmp_path):
    cfg = _ray_cfg(small_shards, tmp_path / "run", 2)
    cfg.epochs, cfg.steps_per_epoch = 3, 1  # what is checked is the restart, not the steps
    # rank 1 ends epoch 1 only after the epoch-0 checkpoint was reported (a barrier)
    rank1 = tmp_path / "run" / "ranks" / "rank-1-epoch-1.json"
    killed: list[int] = []

    def kill_rank1_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while not rank1.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if rank1.exists():
            pid = json.loads(rank1.read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_rank1_after_a_checkpoint)
    killer.start()
    run = finetune(cfg)
    killer.join()
    assert killed
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    resumes = [r for r in records if r["kind"] == "resume"]
    epochs = [r["epoch"] for r in records if r["kind"] == "epoch"]
    print(f"\nkilled rank 1 (pid {killed[0]}); resumed at epochs {[r['epoch'] for r in resumes]}")
    assert resumes and all(r["epoch"] >= 1 for r in resumes)
    assert sorted(set(epochs)) == [0, 1, 2] and (run / "eval.json").exists()


@pytest.mark.slow
def test_arnet_end_to_end_runs_its_stages_and_freezes_the_policy_in_a3(small_shards, tmp_path):
    def cfg():
        return resolve_finetune_config(
            "arnet", shards=small_shards, out=tmp_path / "arnet",
            views=["r32=resnet18@32", "r16=resnet18@16"], frames=4, batch_size=4, epochs=6,
            steps_per_epoch=1, optimizer="adamw", lr=1e-3,
            sets=["method_config.views=r32,r16", "skips=1", "hidden=16", "val_split=test",
                  "precise_bn_batches=1", "warmup_epochs=0"])

    def snapshot(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
        state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
        policy = torch.cat([v.flatten() for k, v in state.items() if k.startswith(
            ("method.lstm.", "method.gate."))])
        return policy, state["encoder.backbones.r32.conv1.weight"].clone()

    run = finetune(cfg(), stop_after_epochs=4)  # warmup 0, joint 1-2, finetune 3
    policy_a3, backbone_a3 = snapshot(run)
    finetune(cfg())  # resumes: finetune epochs 4-5
    policy_end, backbone_end = snapshot(run)
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in records if r["kind"] == "epoch"]
    assert stages == ["warmup", "joint", "joint", "finetune", "finetune", "finetune"]
    steps = [r for r in records if r["kind"] == "step"]
    # each resolution's base model learns on every frame; then the method's eq. 12
    assert all({"A1_r32", "A1_r16"} <= set(r) for r in steps if r["stage"] == "warmup")
    assert all("flops" in r for r in steps if r["stage"] != "warmup")
    assert torch.equal(policy_a3, policy_end)  # policy frozen
    assert not torch.equal(backbone_a3, backbone_end)  # ... while the backbones fine-tune
    result = json.loads((run / "eval.json").read_text())
    assert result["videos"] == 4 and result["gflops_mean"] > 0
    assert sorted((run / "export").glob("*.pth")) == [run / "export" / "r16.pth",
                                                       run / "export" / "r32.pth"]


@pytest.mark.slow
def test_c2f_end_to_end_trains_both_pathways_and_measures_its_exit_errors(small_shards,
                                                                          tmp_path):
    cfg = resolve_finetune_config(
        "c2f", shards=small_shards, out=tmp_path / "c2f",
        views=["coarse=resnet18@16", "fine=resnet18@32"], frames=4, batch_size=4, epochs=2,
        steps_per_epoch=1, optimizer="adamw", lr=1e-3,
        sets=["tsm=fine", "head_hidden=0", "val_split=test", "precise_bn_batches=1"])
    run = finetune(cfg)
    best = load_checkpoint(run / "checkpoints" / "best.pt")["model"]
    assert torch.isfinite(best["method.train_errors"]).all()  # eq. 5's rates, measured
    first = torch.load(run / "export" / "coarse.pth", weights_only=True)
    assert set(first) == set(build_model(cfg).model.encoder.backbones["coarse"].state_dict())
    result = json.loads((run / "eval.json").read_text())
    assert result["videos"] == 4 and result["gflops_mean"] > 0


def _tensors(run: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


@pytest.mark.slow
def test_c2f_classroom_trains_the_teacher_first_then_distils_from_it_frozen(small_shards,
                                                                            tmp_path):
    """Eq. 4 end to end without --freeze: stage "teacher" trains the fine backbone and head
    (the coarse backbone stays fixed), stage "classroom" freezes both and distils (KLD)."""
    def cfg():
        return resolve_finetune_config(
            "c2f", shards=small_shards, out=tmp_path / "classroom",
            views=["coarse=resnet18@16", "fine=resnet18@32"], frames=2, batch_size=4,
            epochs=2, steps_per_epoch=1, optimizer="adamw", lr=1e-3,
            sets=["mode=classroom", "head_hidden=0", "val_split=test",
                  "precise_bn_batches=1", "warmup_epochs=0"])

    fine = ("encoder.backbones.fine.", "method.pathways.1.")
    coarse = ("encoder.backbones.coarse.", "method.pathways.0.")
    initial = {k: v.clone() for k, v in build_model(cfg()).model.state_dict().items()}
    run = finetune(cfg(), stop_after_epochs=1)
    teacher = _tensors(run, fine + coarse)
    finetune(cfg())  # resumes into the classroom stage
    end = _tensors(run, fine + coarse)
    for key in ("encoder.backbones.fine.conv1.weight", "method.pathways.1.head.1.weight"):
        assert not torch.equal(initial[key], teacher[key]), key  # the teacher learns first
    assert torch.equal(initial["encoder.backbones.coarse.conv1.weight"],
                       teacher["encoder.backbones.coarse.conv1.weight"])
    frozen = [k for k in teacher if k.startswith(fine)]
    assert frozen and all(torch.equal(teacher[k], end[k]) for k in frozen)  # BN stats too
    assert not torch.equal(teacher["encoder.backbones.coarse.conv1.weight"],
                           end["encoder.backbones.coarse.conv1.weight"])
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["stage"] for r in steps] == ["teacher", "classroom"]
    assert "KLD" not in steps[0] and steps[1]["KLD"] > 0  # eq. 4's distillation term
    meta = json.loads((run / "export" / "fine.json").read_text())
    assert meta["frozen"] is False  # trained in the teacher stage


@pytest.mark.slow
def test_sofnet_end_to_end_reads_live_stage_outputs(small_shards, tmp_path):
    cfg = resolve_finetune_config(
        "sofnet", shards=small_shards, out=tmp_path / "sofnet", views=["fine=resnet18@32"],
        frames=4, batch_size=4, epochs=5, steps_per_epoch=1, optimizer="adamw", lr=1e-3,
        sets=["hidden=16", "embed=16", "mlp_hidden=16", "val_split=test",
              "precise_bn_batches=1"])
    run = finetune(cfg)
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if r["kind"] == "epoch"] == ["warmup"] + ["joint"] * 4
    result = json.loads((run / "eval.json").read_text())
    assert result["videos"] == 4 and 0 < result["gflops_mean"]
