"""`c2f finetune --jpeg-decoder dali`: DALI decodes each batch's picked JPEGs in the main process
and the clip's crop/flip/resize/normalise run as torch ops, equal to the PIL path.

Real shards of generated videos (64x48 frames, JPEG quality of `c2f shards`); DALI's CPU
decoder ('cpu'). The GPU path ('mixed', nvJPEG) needs a GPU and is not exercised here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from cluster.cli import main as c2f
from pipeline.jpeg_dali import dali_importable
from pipeline.manifest import read_manifest
from pipeline.shards import finalize, plan_shards, write_shard
from pipeline.synth import SynthConfig, make_synthetic_dataset
from pipeline.types import FrameFormat, SamplingPlan
from trainers.clips import ClipSpec, shard_urls
from trainers.clips_dali import DaliClipLoader, clip_loader, resolve_clip_decoder
from trainers.rundir import RunDir

pytestmark = pytest.mark.skipif(not dali_importable(), reason="nvidia-dali not installed")

# One grey level after normalising, in the channel with the smallest std (0.224).
ONE_LEVEL = 1 / (255 * 0.224)
CLASSES = ["a", "b", "c"]
# 32 shrinks the crops (antialiased filter), 56 enlarges some of them
SIZES = (32, 56)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dali_clips")
    make_synthetic_dataset(root, SynthConfig(videos=6, classes=3, seed=5, width=64, height=48,
                                             fps=8.0, min_duration=1.0, max_duration=1.5))
    table = read_manifest(root / "manifest.parquet")
    splits = ["train", "train", "train", "train", "test", "test"]
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(splits))
    out = root / "shards"
    for plan in plan_shards(table, out, sampling=SamplingPlan(fps=None, frames=6),
                            fmt=FrameFormat(short_side=48), videos_per_shard=3):
        write_shard(plan)
    finalize(out)
    return out


def _classes(shards: Path) -> list[str]:
    from trainers.clips import scan_shards

    return sorted({c for e in scan_shards(shard_urls(shards)) for c in e.labels})


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_dali_clips_equal_the_pil_path(shards, train):
    urls, classes = shard_urls(shards), _classes(shards)
    spec = ClipSpec(frames=4, sizes=SIZES, train=train)
    steps = 3 if train else None
    pil = clip_loader(urls, spec, classes, "train", 2, steps, seed=7, decoder="pil")
    dali = clip_loader(urls, spec, classes, "train", 2, steps, seed=7, decoder="dali")
    assert isinstance(dali, DaliClipLoader) and len(dali) == len(pil) == (3 if train else 2)
    worst = 0.0
    batches = 0
    for a, b in zip(pil, dali, strict=True):
        batches += 1
        assert a.video_ids == b.video_ids
        assert torch.equal(a.targets, b.targets)
        for s in SIZES:
            assert a.clips[s].shape == b.clips[s].shape == (len(a.video_ids), 4, 3, s, s)
            worst = max(worst, float((a.clips[s] - b.clips[s]).abs().max()))
    assert batches == len(pil)
    print(f"\n{'train' if train else 'eval'}: max |PIL - DALI| after normalising = "
          f"{worst:.4f} ({worst / ONE_LEVEL:.2f} grey levels)")
    assert worst <= 1.01 * ONE_LEVEL


def test_auto_picks_pil_on_cpu_and_dali_when_asked():
    assert resolve_clip_decoder("auto", "cpu") == "pil"
    assert resolve_clip_decoder("dali", "cpu") == "dali"
    assert resolve_clip_decoder("pil", "cpu") == "pil"
    with pytest.raises(ValueError):
        resolve_clip_decoder("pillow", "cpu")


def test_finetune_with_the_dali_decoder_trains(shards, tmp_path, capsys):
    run = tmp_path / "run"
    rc = c2f(["finetune", "uniform", "--shards", str(shards), "--out", str(run),
              "--view", "fine=resnet18@32", "--frames", "4", "--batch-size", "2",
              "--epochs", "1", "--jpeg-decoder", "dali",
              "--set", "steps_per_epoch=2", "--set", "precise_bn_batches=1",
              "--set", "val_split=train"])
    assert rc == 0, capsys.readouterr().err
    files = RunDir(run)
    assert files.finished()
    assert json.loads(files.config.read_text())["jpeg_decoder"] == "dali"
    steps = [json.loads(line) for line in files.metrics.read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["kind"] == "step"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    # the decoder says how the run executes, not what it learns: the same run re-run with
    # Pillow is the same run (finished, nothing redone), not "a different config"
    args = ["finetune", "uniform", "--shards", str(shards), "--out", str(run),
            "--view", "fine=resnet18@32", "--frames", "4", "--batch-size", "2",
            "--epochs", "1", "--jpeg-decoder", "pil", "--set", "steps_per_epoch=2",
            "--set", "precise_bn_batches=1", "--set", "val_split=train"]
    assert c2f(args) == 0, capsys.readouterr().err
    assert files.metrics.read_text().count('"kind": "step"') == 2
