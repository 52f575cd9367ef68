"""Shard planning, writing, resume, determinism and reading.

All videos here are generated: tiny 64x48 clips written with pipeline/encode.py whose frame i
is painted a known colour, decoded for real with PyAV through pipeline.decode.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset
from media import make_video

from pipeline.decode import decode_video
from pipeline.devices import hide_gpus
from pipeline.encode import write_video
from pipeline.imageops import encode_jpeg
from pipeline.keys import sample_key
from pipeline.reader import iter_shard, read_shards
from pipeline.shard_worker import DecodeWorker, WorkerStartError
from pipeline.shards import (
    IncompleteShardsError,
    ShardSettingsError,
    estimate_video_bytes,
    finalize,
    plan_shards,
    shard_name,
    write_shard,
)
from pipeline.types import FrameFormat, SamplingPlan

SAMPLING = SamplingPlan(fps=2.0)
FMT = FrameFormat(short_side=48, jpeg_quality=85)
# PyAV explicitly: `auto` would import torch and DALI in every decoder child just to find no GPU.
KW = {"sampling": SAMPLING, "fmt": FMT, "backend": "pyav"}


def make_clip(path: Path, seconds: float = 2.0, fps: float = 10.0, shade: int = 0) -> Path:
    """A 64x48 H.264 clip whose frame i is a flat colour that depends on i and `shade`."""
    frames = []
    for i in range(int(seconds * fps)):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., 0] = (i * 12) % 256
        frame[..., 1] = shade
        frame[..., 2] = 255 - (i * 12) % 256
        frames.append(frame)
    return write_video(path, frames, codec="h264", fps=fps)


def manifest_for(paths: list[Path], ids: list[str] | None = None) -> pa.Table:
    ids = ids or [p.stem for p in paths]
    return pa.table(
        {
            "video_id": ids,
            "path": [str(p) for p in paths],
            "labels": [[f"class{i % 2}"] for i in range(len(paths))],
            "split": ["train"] * len(paths),
            "duration": pa.array([2.0] * len(paths), pa.float64()),
        }
    )


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("clips")
    return [make_clip(root / f"clip{i}.mp4", shade=40 * i) for i in range(5)]


def run_all(plans: list) -> list:
    return [write_shard(plan) for plan in plans]


def test_plan_keeps_manifest_order_and_is_deterministic(clips, tmp_path):
    manifest = manifest_for(clips)
    first = plan_shards(manifest, tmp_path / "a", **KW, videos_per_shard=2)
    again = plan_shards(manifest, tmp_path / "a", **KW, videos_per_shard=2)
    assert first == again
    assert [len(p.videos) for p in first] == [2, 2, 1]
    assert [v.video_id for p in first for v in p.videos] == [c.stem for c in clips]
    assert [p.name for p in first] == [shard_name(i) for i in range(3)]
    assert pickle.loads(pickle.dumps(first[1])) == first[1]


def test_target_bytes_packs_by_estimated_size(tmp_path):
    durations = [10.0, 10.0, 100.0, 10.0, None]
    manifest = pa.table(
        {
            "video_id": [f"v{i}" for i in range(5)],
            "path": [f"/nowhere/v{i}.mp4" for i in range(5)],
            "labels": [[] for _ in range(5)],
            "split": ["train"] * 5,
            "duration": pa.array(durations, pa.float64()),
        }
    )
    small = estimate_video_bytes(10.0, SAMPLING, FMT)
    assert estimate_video_bytes(100.0, SAMPLING, FMT) > 9 * small
    plans = plan_shards(manifest, tmp_path, **KW, target_bytes=int(2.5 * small))
    # v0+v1 fit; v2 alone exceeds the target; v3 + v4 (unknown duration -> median 10 s) fit.
    assert [[v.video_id for v in p.videos] for p in plans] == [["v0", "v1"], ["v2"], ["v3", "v4"]]


def test_changed_settings_are_refused(clips, tmp_path):
    manifest = manifest_for(clips)
    plan_shards(manifest, tmp_path, **KW)
    other_fmt = dict(KW, fmt=FrameFormat(short_side=64))
    with pytest.raises(
        ShardSettingsError, match=r"\(format: was .*'short_side': 48.*new output directory"
    ):
        plan_shards(manifest, tmp_path, **other_fmt)
    other_sampling = dict(KW, sampling=SamplingPlan(fps=None, frames=4))
    with pytest.raises(ShardSettingsError, match=r"\(sampling: was"):
        plan_shards(manifest, tmp_path, **other_sampling)
    with pytest.raises(ShardSettingsError, match="manifest"):
        plan_shards(manifest_for(clips[:2]), tmp_path, **KW)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backend": "gpu"}, "backend must be one of"),
        ({"fmt": FrameFormat(short_side=48, jpeg_quality=0)}, "jpeg_quality"),
        ({"fmt": FrameFormat(short_side=48, center_crop=64)}, "center_crop"),
    ],
)
def test_settings_that_would_fail_every_video_are_refused_before_work(
    clips, tmp_path, change, message
):
    with pytest.raises(ValueError, match=message):
        plan_shards(manifest_for(clips[:1]), tmp_path, **{**KW, **change})
    assert not (tmp_path / "settings.json").exists()


def test_duplicate_ids_are_refused(clips, tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        plan_shards(manifest_for(clips[:2], ["same", "same"]), tmp_path, **KW)


def test_reader_returns_what_was_decoded(clips, tmp_path):
    plans = plan_shards(manifest_for(clips[:2]), tmp_path, **KW)
    result = write_shard(plans[0])
    assert (result.videos_ok, result.videos_failed, result.skipped) == (2, 0, False)
    samples = list(iter_shard(result.path))
    assert [s.meta["video_id"] for s in samples] == ["clip0", "clip1"]
    for i, (sample, clip) in enumerate(zip(samples, clips[:2], strict=True)):
        reference = decode_video(str(clip), SAMPLING, FMT, backend="pyav")
        assert sample.meta["timestamps"] == reference.timestamps
        assert sample.jpegs == [encode_jpeg(f, FMT.jpeg_quality) for f in reference.frames]
        assert len(sample.frames) == len(reference.frames) == 4
        for got, want in zip(sample.frames, reference.frames, strict=True):
            assert got.shape == want.shape
            assert np.abs(got.astype(int) - want.astype(int)).mean() < 3  # JPEG round trip
        meta = sample.meta
        assert (meta["width"], meta["height"]) == (64, 48)
        assert meta["path"] == str(clip)
        assert (meta["labels"], meta["split"]) == ([f"class{i}"], "train")
        assert meta["key"] == sample.key
        assert meta["sampling"] == {"fps": 2.0, "frames": None, "mode": "exact"}
        assert meta["format"] == {"short_side": 48, "center_crop": None, "jpeg_quality": 85}
        for field in ("container", "codec", "native_fps", "duration", "backend", "frames_decoded"):
            assert meta[field] is not None, field
    assert result.frames == 8 and result.bytes == os.path.getsize(result.path)


def test_plain_webdataset_reads_what_the_project_reader_returns(clips, tmp_path):
    plans = plan_shards(manifest_for(clips[:3]), tmp_path, **KW, videos_per_shard=2)
    run_all(plans)
    urls = [p.path for p in plans]
    ours = {s.key: s for s in read_shards(tmp_path)}
    seen = []
    plain = webdataset.WebDataset(urls, shardshuffle=False).decode("rgb8")
    for sample in plain:
        mine = ours[sample["__key__"]]
        meta = sample["json"]
        assert meta == mine.meta
        frames = [sample[k] for k in sorted(k for k in sample if k.endswith(".jpg"))]
        assert len(frames) == meta["num_frames"] == len(mine.frames)
        for got, want in zip(frames, mine.frames, strict=True):
            np.testing.assert_array_equal(got, want)
        seen.append(meta["video_id"])
    assert seen == ["clip0", "clip1", "clip2"]


def test_reader_streams_pipe_commands_and_tar_headers_are_fixed(clips, tmp_path):
    plans = plan_shards(manifest_for(clips[:3]), tmp_path, **KW, videos_per_shard=2)
    run_all(plans)
    from_files = list(read_shards(tmp_path, decode_frames=False))
    from_pipes = list(read_shards([f"pipe:cat {p.path}" for p in plans], decode_frames=False))
    assert [(s.key, s.meta, s.jpegs) for s in from_pipes] == [
        (s.key, s.meta, s.jpegs) for s in from_files
    ]
    assert [s.meta["video_id"] for s in from_files] == ["clip0", "clip1", "clip2"]

    with tarfile.open(plans[0].path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    keys = [sample_key("clip0"), sample_key("clip1")]
    assert names == [n for k in keys for n in sorted(x for x in names if x.startswith(k + "."))]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) for m in members} == {
        (0, 0, 0, "", "", 0o644, tarfile.REGTYPE)
    }


def test_rerun_skips_and_output_is_byte_identical(clips, tmp_path):
    manifest = manifest_for(clips[:3])
    kwargs = dict(**KW, videos_per_shard=2)
    plans = plan_shards(manifest, tmp_path / "one", **kwargs)
    first = run_all(plans)
    summary = finalize(tmp_path / "one")
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    snapshot = {name: (tmp_path / "one" / name).read_bytes() for name in files}

    again = run_all(plan_shards(manifest, tmp_path / "one", **kwargs))
    assert all(r.skipped for r in again)
    assert [(r.videos_ok, r.frames, r.bytes) for r in again] == [
        (r.videos_ok, r.frames, r.bytes) for r in first
    ]
    assert finalize(tmp_path / "one") == summary
    assert {n: (tmp_path / "one" / n).read_bytes() for n in files} == snapshot

    run_all(plan_shards(manifest, tmp_path / "two", **kwargs))
    finalize(tmp_path / "two")
    for name in files:
        assert (tmp_path / "two" / name).read_bytes() == snapshot[name], name


def test_finalize_writes_index_and_refuses_missing_shards(clips, tmp_path):
    plans = plan_shards(manifest_for(clips[:3]), tmp_path, **KW, videos_per_shard=2)
    write_shard(plans[0])
    with pytest.raises(IncompleteShardsError, match="shard-000001.tar"):
        finalize(tmp_path)
    write_shard(plans[1])
    summary = finalize(tmp_path)
    assert (summary["videos_ok"], summary["videos_failed"], summary["frames"]) == (3, 0, 12)
    index = pq.read_table(tmp_path / "index.parquet").to_pylist()
    assert [row["video_id"] for row in index] == ["clip0", "clip1", "clip2"]
    assert [row["shard"] for row in index] == ["shard-000000.tar"] * 2 + ["shard-000001.tar"]
    assert all(row["status"] == "ok" and row["num_frames"] == 4 for row in index)
    assert index[0]["timestamps"] == [0.0, 0.5, 1.0, 1.5]
    assert pq.read_table(tmp_path / "errors.parquet").num_rows == 0


WRITER = """
import logging, pickle, sys
from pipeline.shards import write_shard
logging.basicConfig(level=logging.INFO)
with open(sys.argv[1], "rb") as fh:
    write_shard(pickle.load(fh))
"""


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def test_killed_writer_leaves_no_final_shard_and_resume_completes(clips, tmp_path):
    # The middle video is a VP9 .mkv followed by 8 GiB of sparse zeros, which keeps the demuxer
    # busy for many seconds, so the writer is certain to be mid-shard when it is killed.
    stuck = make_video(tmp_path / "stuck.mkv", n=20, fps=10.0, codec="vp9", size=(64, 48))
    os.truncate(stuck, stuck.stat().st_size + 8 * 1024**3)
    out = tmp_path / "out"
    manifest = manifest_for([clips[0], stuck, clips[1]])
    (plan,) = plan_shards(manifest, out, **KW, timeout_s=60)
    plan_file = tmp_path / "plan.pkl"
    plan_file.write_bytes(pickle.dumps(plan))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(plan_file)])
    decoders: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and writer.poll() is None:
            decoders = child_pids(writer.pid)
            if decoders and list(out.glob(".shard-000000.tar.tmp-*")):
                break
            time.sleep(0.02)
        time.sleep(1.0)  # let it reach the stuck video
        assert writer.poll() is None, "writer finished before it could be interrupted"
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        for pid in decoders:  # the orphaned decoder child would spin on for a while
            os.kill(pid, signal.SIGKILL)
    assert len(decoders) == 1
    assert not Path(plan.path).exists()
    assert not (out / "shard-000000.meta.json").exists()
    assert list(out.glob(".shard-000000.tar.tmp-*"))

    stuck.unlink()
    make_video(stuck, n=20, fps=10.0, codec="vp9", size=(64, 48))  # input fixed: same command
    result = write_shard(plan)
    assert (result.videos_ok, result.videos_failed, result.skipped) == (3, 0, False)
    assert [s.meta["video_id"] for s in iter_shard(plan.path)] == ["clip0", "stuck", "clip1"]
    assert finalize(out)["removed_temp_files"] == 1
    assert not list(out.glob(".*"))


def test_stale_plan_is_refused_after_settings_change(clips, tmp_path):
    (old_plan,) = plan_shards(manifest_for(clips[:1]), tmp_path, **KW)
    (tmp_path / "settings.json").unlink()
    plan_shards(manifest_for(clips[:1]), tmp_path, **dict(KW, fmt=FrameFormat(short_side=32)))
    with pytest.raises(ShardSettingsError, match="re-plan"):
        write_shard(old_plan)
    assert not list(tmp_path.glob("*.tar")) and not list(tmp_path.glob(".*"))


def test_decoder_that_cannot_start_fails_the_shard_not_the_videos(clips, tmp_path, monkeypatch):
    (plan,) = plan_shards(manifest_for(clips[:2]), tmp_path, **KW)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a broken interpreter
    with pytest.raises(WorkerStartError, match="failed to start"):
        write_shard(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_a_decoder_for_a_task_without_gpus_sees_none(clips, monkeypatch):
    """A Ray task that reserved no GPU sees CUDA_VISIBLE_DEVICES unset, i.e. every GPU of its
    node: the task hides them, so its decoding child gets "" and `auto`/`dali` cannot decode
    on GPU 0 unreserved."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")

    def child_env():
        with DecodeWorker(30.0) as worker:
            worker.run(str(clips[0]), SAMPLING, FMT, "pyav")
            raw = Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
        return dict(item.decode().split("=", 1) for item in raw if b"=" in item)

    assert child_env()["CUDA_VISIBLE_DEVICES"] == "3"
    hide_gpus()  # what a Ray task body that reserved no GPU does first
    assert child_env()["CUDA_VISIBLE_DEVICES"] == ""


def test_shards_from_other_settings_are_never_mixed_in(clips, tmp_path):
    """Even if settings.json is deleted by hand, shards written with the old settings are
    neither skipped as done nor gathered by finalize."""
    (plan,) = plan_shards(manifest_for(clips[:1]), tmp_path, **KW)
    write_shard(plan)
    (tmp_path / "settings.json").unlink()
    other = {**KW, "fmt": FrameFormat(short_side=32)}
    (new_plan,) = plan_shards(manifest_for(clips[:1]), tmp_path, **other)
    with pytest.raises(ShardSettingsError, match="other settings"):
        write_shard(new_plan)
    with pytest.raises(ShardSettingsError, match="mixes two runs"):
        finalize(tmp_path)
