"""Bad inputs in one shards run: each lands in errors.parquet with a stage and a reason, and
every good video of the same run is written. Inputs are generated here (tests/media.py and
PyAV). Two inputs would hang a decoder without the per-video timeout: a named pipe that nobody
writes to, and a "spinning" file (a valid VP9 .mkv followed by gigabytes of sparse zeros, which
the demuxer scans byte by byte for tens of seconds while taking no disk space)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from media import make_audio_only, make_video, truncate_copy

from pipeline.reader import read_shards
from pipeline.shard_worker import DecodeWorker
from pipeline.shards import finalize, plan_shards, write_shard
from pipeline.types import DecodeError, FrameFormat, SamplingPlan

SAMPLING = SamplingPlan(fps=2.0)
FMT = FrameFormat(short_side=48)
DECODER_STAGES = {"open", "probe", "decode"}


def make_aac_only_mp4(path: Path) -> Path:
    """An .mp4 holding one AAC audio stream and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "mono"
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 44100, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_streamless_mp4(path: Path) -> Path:
    """A valid .mp4 container with no streams at all (the muxer drops the empty video track)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path


def make_zero_frame_mkv(path: Path) -> Path:
    """A Matroska file whose H.264 video stream has no frames (its audio stream has some)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=44100)
        audio.layout = "mono"
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 44100, i * 1024
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return path


def make_spinning_mkv(path: Path, gib: int = 8) -> Path:
    """A small VP9 .mkv with `gib` GiB of sparse zeros appended: a regular file that keeps the
    demuxer busy far longer than any test timeout."""
    make_video(path, n=20, fps=10.0, codec="vp9", size=(64, 48))
    os.truncate(path, path.stat().st_size + gib * 1024**3)
    return path


def bad_inputs(root: Path) -> dict[str, Path]:
    good = make_video(root / "source.mp4", n=30, fps=10.0, size=(64, 48))
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is a text file, not a video\n")
    os.mkfifo(root / "x.mp4")
    return {
        "truncated": truncate_copy(good, root / "truncated.mp4", 0.4),
        "empty": root / "empty.mp4",
        "text": root / "text.mp4",
        "no_video_stream": make_streamless_mp4(root / "no_streams.mp4"),
        "audio_only_mka": make_audio_only(root / "audio.mka"),
        "audio_only_mp4": make_aac_only_mp4(root / "aac.mp4"),
        "zero_frames": make_zero_frame_mkv(root / "zero_frames.mkv"),
        "missing": root / "does_not_exist.mp4",
        "named_pipe": root / "x.mp4",
        "spinning": make_spinning_mkv(root / "spinning.mkv"),
    }


def test_bad_inputs_become_error_rows_and_good_videos_are_written(tmp_path):
    bad = bad_inputs(tmp_path)
    good = {
        f"good{i}": make_video(tmp_path / f"good{i}.mp4", n=20, fps=10.0, size=(64, 48))
        for i in range(3)
    }
    # Good videos first, in the middle and last, so a bad one cannot hide a later good one.
    order = ["good0", *list(bad)[:5], "good1", *list(bad)[5:], "good2"]
    paths = {**bad, **good}
    manifest = pa.table(
        {
            "video_id": order,
            "path": [str(paths[name]) for name in order],
            "labels": [["x"]] * len(order),
            "split": ["test"] * len(order),
            "duration": pa.array([None] * len(order), pa.float64()),
        }
    )
    out = tmp_path / "shards"
    plans = plan_shards(
        manifest,
        out,
        sampling=SAMPLING,
        fmt=FMT,
        backend="pyav",
        videos_per_shard=6,
        timeout_s=3.0,
    )
    results = [write_shard(plan) for plan in plans]
    assert sum(r.videos_ok for r in results) == 3
    assert sum(r.videos_failed for r in results) == len(bad)
    summary = finalize(out)
    assert (summary["videos_ok"], summary["videos_failed"]) == (3, len(bad))

    errors = {row["video_id"]: row for row in pq.read_table(out / "errors.parquet").to_pylist()}
    assert set(errors) == set(bad)
    for name, row in errors.items():
        assert row["path"] == str(bad[name])
        assert row["reason"].strip(), name
        expected = {
            "spinning": {"timeout"},
            # pipeline.probe refuses non-regular files up front; a decoder that opened the
            # pipe would block on it until the timeout: either way it is an error row.
            "named_pipe": DECODER_STAGES | {"timeout"},
        }.get(name, DECODER_STAGES)
        assert row["stage"] in expected, (name, row)
    assert errors["spinning"]["reason"].startswith("no result within 3 s")

    written = [sample.meta["video_id"] for sample in read_shards(out, decode_frames=False)]
    assert written == ["good0", "good1", "good2"]
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert [row["video_id"] for row in index] == order
    assert {row["video_id"] for row in index if row["status"] == "failed"} == set(bad)


def test_worker_survives_a_crashed_decoder(tmp_path):
    """A decoder process that dies (killed here from outside) costs one error row; the next
    video gets a fresh process."""
    stuck = make_spinning_mkv(tmp_path / "stuck.mkv")
    good = make_video(tmp_path / "good.mp4", n=20, fps=10.0, size=(64, 48))
    with DecodeWorker(timeout_s=30.0) as worker:
        assert len(worker.run(str(good), SAMPLING, FMT, "pyav").jpegs) == 4
        killer = threading.Timer(0.5, lambda: os.kill(worker.pid, 9))
        killer.start()
        with pytest.raises(DecodeError) as caught:
            worker.run(str(stuck), SAMPLING, FMT, "pyav")
        killer.join()
        assert caught.value.stage == "worker"
        assert "exit code -9" in caught.value.reason
        assert len(worker.run(str(good), SAMPLING, FMT, "pyav").jpegs) == 4
        assert worker.restarts == 1
