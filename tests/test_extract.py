"""Feature extraction from real shards into a real store, resume, the CLI, and `c2f build`.

Inputs are the session's generated tiny videos (tests/conftest.py), written into WebDataset
shards by pipeline.shards; backbones are random-init (seeded) resnet18 / mobilenet_v2 at tiny
input sizes so CPU cost stays low.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backbones import build_backbone
from cluster.cli import main as c2f
from featstore import list_parts, open_store, validate
from pipeline.build import build_shard, plan_build
from pipeline.extract import (
    RANDOM_INIT_SEED,
    ExtractOptions,
    extract_shard,
    finalize_store,
    plan_extraction,
)
from pipeline.manifest import read_manifest
from pipeline.preprocess import preprocess_frames, view_preprocess
from pipeline.reader import iter_shard
from pipeline.shards import finalize, plan_shards, write_shard
from pipeline.types import FrameFormat, SamplingPlan

SAMPLING = SamplingPlan(fps=1.0)
FMT = FrameFormat(short_side=72)
VIEWS = ["a=resnet18@64", "b=mobilenet_v2@48"]


@pytest.fixture(scope="module")
def shards(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    table = read_manifest(tiny_dataset.manifest)
    for plan in plan_shards(table, out, sampling=SAMPLING, fmt=FMT, videos_per_shard=3):
        write_shard(plan)
    finalize(out)
    return out


@pytest.fixture(scope="module")
def extracted(shards, tmp_path_factory) -> tuple[Path, list]:
    store = tmp_path_factory.mktemp("store")
    options = ExtractOptions(stages=("a",), logits=True, batch_size=2, threads=1)
    plans = plan_extraction(shards, store, VIEWS, options)
    results = [extract_shard(p) for p in plans]
    finalize_store(store, plans)
    return store, results


def direct_forward(backbone: str, size: int, frames: list[np.ndarray]) -> dict:
    """The reference: same preprocessing, same seeded random model, float32 forward."""
    torch.set_num_threads(1)
    torch.manual_seed(RANDOM_INIT_SEED)
    model = build_backbone(backbone).eval()
    x = torch.from_numpy(preprocess_frames(frames, view_preprocess(size)))
    with torch.inference_mode():
        return {k: v.numpy() for k, v in model.forward_stages(x).items()}


def test_extracted_features_match_a_direct_forward(shards, extracted):
    store_dir, results = extracted
    assert [r.part for r in results] == ["shard-000000", "shard-000001"]
    assert sum(r.videos for r in results) == 6 and not any(r.skipped for r in results)
    s = open_store(store_dir)
    assert s.views == ["a", "b"] and s.stage_names("a") == ["res1", "res2", "res3", "res4", "res5"]
    attrs = s.view_attrs("a")
    assert (attrs["backbone"], attrs["input_size"], attrs["dim"]) == ("resnet18", 64, 512)
    assert attrs["resize_short_side"] == 73 and attrs["weights_sha256"] == "random-init"
    assert s.attrs["sampling"]["fps"] == 1.0 and s.attrs["frame_format"]["short_side"] == 72
    sample = next(iter_shard(shards / "shard-000001.tar"))
    vid = sample.meta["video_id"]
    assert s.labels(vid) == sample.meta["labels"] and s.split(vid) == sample.meta["split"]
    np.testing.assert_allclose(s.timestamps(vid), sample.meta["timestamps"])
    ref = direct_forward("resnet18", 64, sample.frames)
    tol = {"rtol": 2e-3, "atol": 2e-3}
    np.testing.assert_allclose(s.read(vid, "a").astype(np.float32), ref["features"], **tol)
    np.testing.assert_allclose(s.read_logits(vid, "a").astype(np.float32), ref["logits"], **tol)
    np.testing.assert_allclose(s.read_stages(vid, "a")["res3"].astype(np.float32), ref["res3"],
                               **tol)
    ref_b = direct_forward("mobilenet_v2", 48, sample.frames)
    np.testing.assert_allclose(s.read(vid, "b").astype(np.float32), ref_b["features"], **tol)
    assert validate(store_dir) == []


def test_rerun_skips_finished_parts_and_redoes_a_missing_one(shards, tmp_path):
    plans = plan_extraction(shards, tmp_path, ["b=mobilenet_v2@48"], ExtractOptions(threads=1))
    first = [extract_shard(p) for p in plans]
    kept = tmp_path / "parts" / "shard-000000.h5"
    stamp = kept.stat().st_mtime_ns
    (tmp_path / "parts" / "shard-000001.h5").unlink()
    again = [extract_shard(p) for p in plans]
    assert [r.skipped for r in again] == [True, False]
    assert [(r.videos, r.frames) for r in again] == [(r.videos, r.frames) for r in first]
    assert kept.stat().st_mtime_ns == stamp
    assert finalize_store(tmp_path, plans)["videos"] == 6 and validate(tmp_path) == []


def test_cli_extract_on_ray_then_info_and_validate(shards, ray_local, tmp_path, capsys):
    store = tmp_path / "store"
    rc = c2f(["extract", "--shards", str(shards), "--out", str(store), "--view",
              "b=mobilenet_v2@48", "--mode", "local", "--batch-size", "4", "--threads",
              "1"])
    assert rc == 0 and list_parts(store) == ["shard-000000", "shard-000001"]
    assert c2f(["featstore", "info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2@48" in out and "videos: 6" in out
    assert c2f(["featstore", "validate", str(store)]) == 0
    part = store / "parts" / "shard-000001.h5"
    part.write_bytes(part.read_bytes()[:4000])
    assert c2f(["featstore", "validate", str(store)]) == 1
    assert "shard-000001" in capsys.readouterr().out


def test_build_in_one_pass_equals_shards_then_extract(tiny_dataset, extracted, tmp_path):
    store_dir, _ = extracted
    plans = plan_build(read_manifest(tiny_dataset.manifest), tmp_path / "shards",
                       tmp_path / "store", VIEWS, sampling=SAMPLING, fmt=FMT,
                       videos_per_shard=3,
                       extract=ExtractOptions(stages=("a",), logits=True, batch_size=2, threads=1))
    results = [build_shard(p) for p in plans]
    assert sum(r.videos_ok for r in results) == 6 and not any(r.skipped for r in results)
    finalize(tmp_path / "shards")
    finalize_store(tmp_path / "store", [p.extract for p in plans])
    built, ref = open_store(tmp_path / "store"), open_store(store_dir)
    assert sorted(built.video_ids()) == sorted(ref.video_ids())
    for vid in ref.video_ids():
        np.testing.assert_array_equal(built.read(vid, "a"), ref.read(vid, "a"))
        np.testing.assert_array_equal(built.read(vid, "b"), ref.read(vid, "b"))
    assert all(build_shard(p).skipped for p in plans)
