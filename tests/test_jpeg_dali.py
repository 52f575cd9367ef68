"""DALI JPEG decoding (CPU decoder) against the Pillow path, on real shards.

Inputs are the session's generated tiny videos (tests/conftest.py) written into WebDataset
shards (stored short side 72, JPEG quality 90); backbones are random-init (seeded). DALI's
GPU decoder ('mixed') needs a GPU and is not exercised here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.cli import main as c2f
from featstore import open_store, validate
from pipeline.extract import ExtractView, forward_batch, load_view
from pipeline.imageops import decode_jpeg, encode_jpeg
from pipeline.jpeg_dali import DaliJpegDecoder, dali_jpeg_decoder, resolve_jpeg_decoder
from pipeline.manifest import read_manifest
from pipeline.preprocess import preprocess_frames, preprocess_tensors, view_preprocess
from pipeline.reader import read_shards
from pipeline.shards import finalize, plan_shards, write_shard
from pipeline.types import DecodeError, FrameFormat, SamplingPlan

# One grey level after normalising, in the channel with the smallest std (0.224).
ONE_LEVEL = 1 / (255 * 0.224)


@pytest.fixture(scope="module")
def shards(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dali_shards")
    table = read_manifest(tiny_dataset.manifest)
    for plan in plan_shards(table, out, sampling=SamplingPlan(fps=2.0),
                            fmt=FrameFormat(short_side=72), videos_per_shard=3):
        write_shard(plan)
    finalize(out)
    return out


@pytest.fixture(scope="module")
def shard_jpegs(shards) -> list[bytes]:
    return [j for sample in read_shards(shards, decode_frames=False) for j in sample.jpegs]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_dali_cpu_decode_of_shard_jpegs_equals_pillow(shard_jpegs):
    # Measured: bit-identical (both use libjpeg-turbo); the requirement is PSNR >= 40 dB.
    decoder = dali_jpeg_decoder("cpu", 16, 1)
    images = decoder.decode(shard_jpegs)
    assert len(images) == len(shard_jpegs) > 16  # several DALI runs, the last one short
    for jpeg, image in zip(shard_jpegs, images):
        reference = decode_jpeg(jpeg)
        assert image.dtype == torch.uint8 and image.device.type == "cpu"
        assert tuple(image.shape) == reference.shape
        assert psnr(image.numpy(), reference) >= 40.0


def test_one_pipeline_serves_batches_of_any_size_and_mixed_sizes():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
              for h, w in [(40, 56), (40, 56), (24, 32), (40, 56), (50, 30)]]
    jpegs = [encode_jpeg(f, 95) for f in frames]
    decoder = dali_jpeg_decoder("cpu", 4, 1)
    assert dali_jpeg_decoder("cpu", 4, 1) is decoder  # built once per process
    for batch in (jpegs[:1], jpegs[:3], jpegs):  # 1, 3, then 5 > max_batch (two runs)
        images = decoder.decode(batch)
        assert [tuple(i.shape) for i in images] == [decode_jpeg(j).shape for j in batch]


def test_corrupt_jpeg_raises_decode_error_and_the_pipeline_keeps_working():
    good = encode_jpeg(np.zeros((16, 16, 3), np.uint8), 90)
    decoder = DaliJpegDecoder("cpu", 2)
    with pytest.raises(DecodeError, match="DALI"):
        decoder.decode([good, b"not a jpeg"])
    assert tuple(decoder.decode([good])[0].shape) == (16, 16, 3)


@pytest.mark.parametrize("size", [48, 64, 112])  # shrink (55 < 72), grow (73), grow (128)
def test_dali_cpu_preprocessing_matches_pillow_within_one_grey_level(shard_jpegs, size):
    pp = view_preprocess(size)
    jpegs = shard_jpegs[:12]
    reference = preprocess_frames([decode_jpeg(j) for j in jpegs], pp)
    ours = preprocess_tensors(dali_jpeg_decoder("cpu", 16, 1).decode(jpegs), pp).numpy()
    assert ours.shape == reference.shape == (12, 3, size, size) and ours.dtype == np.float32
    diff = np.abs(ours - reference)
    # Measured: at most 1 grey level apart (Pillow's fixed-point filter vs torch's float one).
    assert diff.max() <= ONE_LEVEL * 1.01
    assert diff.mean() <= 0.25 * ONE_LEVEL


def test_auto_picks_dali_only_for_cuda_and_dali_means_the_cpu_decoder_on_cpu():
    assert resolve_jpeg_decoder("auto", "cpu") == "pillow"
    assert resolve_jpeg_decoder("auto", "cuda") == "dali-mixed"
    assert resolve_jpeg_decoder("dali", "cpu") == "dali-cpu"
    assert resolve_jpeg_decoder("dali", "cuda") == "dali-mixed"
    assert resolve_jpeg_decoder("pillow", "cuda") == "pillow"
    with pytest.raises(ValueError, match="jpeg decoder"):
        resolve_jpeg_decoder("nvjpeg", "cpu")


def test_extract_with_dali_on_cpu_matches_the_pillow_store(shards, tmp_path, capsys):
    common = ["--shards", str(shards), "--view", "a=resnet18@64", "--view",
              "b=mobilenet_v2@48", "--mode", "inprocess", "--batch-size", "8", "--threads", "1"]
    assert c2f(["extract", "--out", str(tmp_path / "dali"), "--jpeg-decoder", "dali"]
               + common) == 0
    assert c2f(["extract", "--out", str(tmp_path / "pil")] + common) == 0  # auto on CPU
    capsys.readouterr()
    dali, pil = open_store(tmp_path / "dali"), open_store(tmp_path / "pil")
    for view in ("a", "b"):
        assert dali.view_attrs(view)["jpeg_decoder"] == "dali-cpu"
        assert pil.view_attrs(view)["jpeg_decoder"] == "pillow"
        assert "torch" in dali.view_attrs(view)["interpolation"]
    assert sorted(dali.video_ids()) == sorted(pil.video_ids()) and len(dali) == 6
    for vid in pil.video_ids():
        np.testing.assert_array_equal(dali.timestamps(vid), pil.timestamps(vid))
        got = dali.read(vid, "a").astype(np.float32)
        ref = pil.read(vid, "a").astype(np.float32)
        # Inputs differ by <= 1 grey level; measured max relative L2 error 0.018 (resnet18).
        rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
        assert rel.max() < 0.05, (vid, rel.max())
    # Random-init MobileNetV2 amplifies 1-grey-level input noise to ~20% feature change, so
    # view b is checked against a direct forward of the DALI-decoded, torch-preprocessed frames.
    lv = load_view(ExtractView("b", "mobilenet_v2", 48), "cpu")
    for sample in read_shards(shards, decode_frames=False):
        images = dali_jpeg_decoder("cpu", 16, 1).decode(sample.jpegs)
        x = preprocess_tensors(images, view_preprocess(48))
        ref = forward_batch(lv, x, "float32", "cpu")["features"]
        got = dali.read(sample.meta["video_id"], "b").astype(np.float32)
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
    assert validate(tmp_path / "dali") == []
