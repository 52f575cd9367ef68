"""Encoder/store parity and the clip loader, on real shards and a real store made from the
session's tiny generated videos (tests/conftest.py)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from featstore import open_store
from pipeline.extract import (
    ExtractOptions,
    extract_shard,
    finalize_store,
    parse_view,
    plan_extraction,
)
from pipeline.manifest import read_manifest
from pipeline.shards import finalize, plan_shards, write_shard
from pipeline.types import FrameFormat, SamplingPlan
from trainers.clips import ClipLoader, ClipSpec, crop_box, frame_indices, scan_shards, shard_urls
from trainers.encoder import ClipEncoder

FRAMES = 6
VIEW = "a=resnet18@48"


@pytest.fixture(scope="module")
def e2e_shards(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e_shards")
    table = read_manifest(tiny_dataset.manifest)
    for plan in plan_shards(table, out, sampling=SamplingPlan(fps=None, frames=FRAMES),
                            fmt=FrameFormat(short_side=64), videos_per_shard=3):
        write_shard(plan)
    finalize(out)
    return out


@pytest.fixture(scope="module")
def e2e_store(e2e_shards, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("e2e_store")
    plans = plan_extraction(e2e_shards, store, [VIEW],
                            ExtractOptions(stages=("a",), batch_size=8, threads=1))
    for plan in plans:
        extract_shard(plan)
    finalize_store(store, plans)
    return store


def test_frame_indices_pick_segments_in_training_and_centres_in_evaluation():
    rng = random.Random(0)
    assert frame_indices(16, 4, False, rng) == [2, 6, 10, 14]
    for _ in range(20):
        idx = frame_indices(16, 4, True, rng)
        assert [i // 4 for i in idx] == [0, 1, 2, 3]  # one frame from each segment
    assert frame_indices(3, 6, False, rng) == [0, 0, 1, 1, 2, 2]  # short video: repeats
    assert frame_indices(10, 4, False, rng, contiguous=True) == [3, 4, 5, 6]
    window = frame_indices(10, 4, True, rng, contiguous=True)
    assert np.all(np.diff(window) == 1)


def test_crop_box_uses_tsn_scales_and_stays_inside():
    rng = random.Random(1)
    sides = set()
    for _ in range(200):
        top, left, h, w = crop_box(64, 85, (1.0, 0.875, 0.75, 0.66), rng)
        assert 0 <= top <= 64 - h and 0 <= left <= 85 - w
        sides.update((h, w))
    assert sides == {64, 56, 48, 42}


def test_encoder_in_eval_mode_reproduces_the_store(e2e_shards, e2e_store):
    store = open_store(e2e_store)
    view = parse_view(VIEW)
    encoder = ClipEncoder([view], with_stages=True).eval()
    loader = ClipLoader(shard_urls(e2e_shards), ClipSpec(FRAMES, (48,), train=False),
                        store.classes, "train", batch_size=2)
    seen = 0
    with torch.no_grad():
        for clip in loader:
            batch = encoder(clip.clips, clip.targets, clip.video_ids)
            for i, vid in enumerate(clip.video_ids):
                want = store.read_views(vid, ["a"])["a"].astype(np.float32)
                got = batch.features["a"][i].numpy()
                assert got.shape == want.shape == (FRAMES, 512)
                # the store keeps float16: agree to float16 rounding
                np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
                stages = store.read_stages(vid, "a")
                np.testing.assert_allclose(batch.stages["a"]["res3"][i].numpy(),
                                           stages["res3"].astype(np.float32), rtol=2e-3,
                                           atol=2e-3)
                assert batch.targets[i].nonzero().flatten().tolist() == [
                    store.classes.index(c) for c in store.labels(vid)]
                seen += 1
    assert seen == len(store.video_ids("train"))


def test_training_loader_gives_every_rank_disjoint_shards_and_equal_steps(e2e_shards,
                                                                          monkeypatch):
    urls = shard_urls(e2e_shards)
    entries = scan_shards(urls)
    classes = sorted({c for e in entries for c in e.labels})
    spec = ClipSpec(4, (32, 48), train=True)
    seen = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        # manifest order is train, train, val, val, test, test: each shard holds one val video
        loader = ClipLoader(urls, spec, classes, "val", batch_size=2, steps_per_epoch=3)
        batches = list(loader)
        assert len(batches) == 3 and all(b.clips[48].shape == (2, 4, 3, 48, 48) for b in batches)
        assert all(b.clips[32].shape == (2, 4, 3, 32, 32) for b in batches)
        seen[rank] = {v for b in batches for v in b.video_ids}
    owner = {e.video_id: urls.index(e.shard) % 2 for e in entries}
    for rank, ids in seen.items():
        assert ids and all(owner[v] == rank for v in ids)


def test_finetune_cli_refuses_what_cannot_run(e2e_shards, tmp_path, capsys):
    from cluster.cli import main as c2f

    assert c2f(["finetune", "liteeval", "--shards", str(e2e_shards), "--out",
                str(tmp_path / "r")]) == 2
    assert "LiteEval stays on cached features" in capsys.readouterr().err
    assert c2f(["finetune", "uniform", "--shards", str(e2e_shards), "--out",
                str(tmp_path / "r"), "--set", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert c2f(["finetune", "uniform", "--shards", str(e2e_shards), "--out",
                str(tmp_path / "r"), "--batch-size", "3", "--workers", "2"]) == 2
    assert "multiple of workers" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_mfnet3d_uniform_end_to_end_takes_whole_clips():
    from backbones.flops import view_cost
    from trainers.encoder import EndToEnd, parse_clip_view
    from trainers.method import TrainState
    from trainers.methods import method_spec

    encoder = ClipEncoder([parse_clip_view("clip=mfnet3d@32")])
    info = encoder.store_info(["a", "b"], frames=8)
    assert info.views["clip"].gmacs_per_frame == pytest.approx(view_cost("mfnet3d", 32, 8).gmacs)
    spec = method_spec("uniform")
    model = EndToEnd(encoder, spec.build(spec.config_type()(**spec.presets, view="clip"), info)).train()
    out, batch = model(torch.randn(2, 8, 3, 32, 32), torch.eye(2), ["x", "y"], TrainState())
    assert batch.features["clip"].shape == (2, 1, encoder.backbones["clip"].feature_dim)
    assert out.gflops == pytest.approx(torch.full((2,), info.views["clip"].gmacs_per_frame),
                                       rel=0.01)  # one clip's cost (+ the tiny head)
    model.method.loss(out, batch, TrainState())[0].backward()
    assert encoder.backbones["clip"].conv1.conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cannot share"):
        ClipEncoder([parse_clip_view("clip=mfnet3d@32"), parse_view("a=resnet18@32")])
