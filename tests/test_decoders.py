"""decode_video on generated videos (tests/media.py) with real PyAV and real DALI-CPU decoding.

Frame i of every test video shows the number i, so each test can tell WHICH frame came back.
"""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
from media import (
    counter_frames,
    make_audio_only,
    make_unseekable_mkv,
    make_video,
    make_with_audio,
    read_counter,
    truncate_copy,
)

from pipeline.decode import choose_backend, decode_video
from pipeline.decode_pyav import PyAVOptions
from pipeline.encode import extension_for
from pipeline.imageops import (
    array_to_rgb,
    center_crop,
    decode_jpeg,
    encode_jpeg,
    frame_to_rgb,
    output_size,
)
from pipeline.probe import probe_video
from pipeline.types import DecodeError, FrameFormat, SamplingPlan

FMT = FrameFormat(short_side=48)


def counters(video) -> list[int]:
    return [read_counter(f) for f in video.frames]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def reference(path, times_abs, fmt, full_size_then_resize=False):
    """Decode every frame with plain PyAV and pick the one shown at each absolute time."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sorted(container.decode(stream), key=lambda f: f.pts)
        chosen = []
        for t in times_abs:
            shown = [f for f in frames if float(f.pts * stream.time_base) <= t + 1e-9]
            frame = shown[-1] if shown else frames[0]
            if full_size_then_resize:
                rgb = array_to_rgb(frame.to_ndarray(format="rgb24"), fmt, 0)
            else:
                rgb = frame_to_rgb(frame, fmt, 0)
            chosen.append((float(frame.pts * stream.time_base), rgb))
        return chosen


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Four-second 25 fps counter clips, keyframe every second, one per codec."""
    root = tmp_path_factory.mktemp("videos")
    return {
        codec: make_video(root / f"clip{extension_for(codec)}", n=100, fps=25, gop=25,
                          codec=codec)
        for codec in ("h264", "vp9", "mjpeg")
    }


@pytest.mark.parametrize(
    "codec,backend",
    [("h264", "pyav"), ("vp9", "pyav"), ("mjpeg", "pyav"), ("vp9", "dali"), ("mjpeg", "dali")],
)
def test_frames_match_a_full_pyav_decode(videos, codec, backend):
    path = videos[codec]
    got = decode_video(path, SamplingPlan(fps=3), FMT, backend=backend)
    ref = reference(path, [t for t in got.info["targets"]], FMT,
                    full_size_then_resize=backend == "dali")
    assert got.info["backend"] == backend
    assert len(got.frames) == len(ref) == 12
    for frame, stamp, (ref_stamp, ref_rgb) in zip(got.frames, got.timestamps, ref):
        assert stamp == pytest.approx(ref_stamp, abs=1e-6)
        assert frame.shape == ref_rgb.shape == (48, 72, 3)
        assert psnr(frame, ref_rgb) >= 35


@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_fps_mode_returns_the_frame_on_screen_at_each_second(videos, backend):
    got = decode_video(videos["vp9"], SamplingPlan(fps=1), FMT, backend=backend)
    assert counters(got) == [0, 25, 50, 75]
    assert got.timestamps == pytest.approx([0.0, 1.0, 2.0, 3.0])


def test_frames_mode_returns_t_segment_centres(videos):
    got = decode_video(videos["h264"], SamplingPlan(fps=None, frames=8), FMT, backend="pyav")
    # Segment centres of a 4 s clip: 0.25, 0.75, ... 3.75 s -> frames 6, 18, ... 93.
    assert counters(got) == [6, 18, 31, 43, 56, 68, 81, 93]
    assert got.timestamps == pytest.approx([c / 25 for c in counters(got)])


def test_more_targets_than_frames_repeat_frames(tmp_path):
    path = make_video(tmp_path / "short.mp4", n=5, fps=5)
    got = decode_video(path, SamplingPlan(fps=None, frames=10), FMT, backend="pyav")
    assert counters(got) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_frame_threading_gives_the_same_frames(videos):
    plan = SamplingPlan(fps=2)
    single = decode_video(videos["h264"], plan, FMT, backend="pyav",
                          pyav_options=PyAVOptions(threads=1, thread_type="SLICE"))
    threaded = decode_video(videos["h264"], plan, FMT, backend="pyav",
                            pyav_options=PyAVOptions(threads=2, thread_type="FRAME"))
    assert counters(single) == counters(threaded) == [0, 12, 25, 37, 50, 62, 75, 87]


def test_dali_chunks_keep_order_and_timestamps(videos):
    got = decode_video(videos["vp9"], SamplingPlan(fps=4), FMT, backend="dali", dali_chunk=3)
    assert counters(got) == [round(k * 6.25 - 0.4) for k in range(16)]
    assert got.info["frames_decoded"] is None


def test_keyframe_mode_decodes_only_keyframes(tmp_path):
    path = make_video(tmp_path / "gop.mp4", n=100, fps=25, gop=20)
    probe = probe_video(path)
    got = decode_video(path, SamplingPlan(fps=2, mode="keyframe"), FMT, backend="pyav")
    assert set(got.timestamps) <= set(probe.keyframe_pts)
    assert got.info["frames_decoded"] == len(set(got.timestamps))
    assert set(counters(got)) <= set(probe.keyframes)
    assert probe.keyframes == tuple(range(0, 100, 20))


def test_exact_mode_decodes_little_more_than_needed_on_sparse_targets(tmp_path):
    path = make_video(tmp_path / "sparse.mp4", n=250, fps=25, gop=25)  # 10 s, key every 1 s
    got = decode_video(path, SamplingPlan(fps=0.4), FMT, backend="pyav")
    assert counters(got) == [0, 62, 125, 187]
    needed, decoded = got.info["frames_needed"], got.info["frames_decoded"]
    assert needed == 1 + 13 + 1 + 13  # keyframe..target per target: 0, 50..62, 125, 175..187
    assert decoded / needed <= 1.1


@pytest.mark.parametrize("codec,backend,start", [("h264", "pyav", 0.0), ("vp9", "dali", 1.5)])
def test_variable_frame_rate_uses_real_timestamps(tmp_path, codec, backend, start):
    gaps = [0.02, 0.3, 0.05, 0.25, 0.1] * 4
    stamps = [start]
    for gap in gaps[:-1]:
        stamps.append(round(stamps[-1] + gap, 3))
    path = make_video(tmp_path / f"vfr{extension_for(codec)}", n=len(stamps), codec=codec,
                      timestamps=stamps)
    got = decode_video(path, SamplingPlan(fps=4), FMT, backend=backend)
    expected = [max(i for i, s in enumerate(stamps) if s <= start + t + 1e-9)
                for t in got.info["targets"]]
    assert counters(got) == expected
    assert got.timestamps == pytest.approx([stamps[i] for i in expected], abs=1e-3)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_applied_so_frames_are_upright(tmp_path, rotation):
    path = make_video(tmp_path / "rot.mp4", n=10, fps=10, size=(96, 64), rotation=rotation)
    got = decode_video(path, SamplingPlan(fps=4), FMT, backend="pyav")
    assert got.info["rotation"] == rotation
    assert counters(got) == [0, 2, 5, 7]  # 0, 0.25, 0.5, 0.75 s at 10 fps
    assert got.frames[0].shape == (48, 72, 3)
    assert got.frames[0][2, 2, 0] > 200 and got.frames[0][2, 2, 1] < 60  # red corner top-left


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_nonzero_start_time_targets_are_relative_timestamps_are_real(tmp_path, codec):
    stamps = [1.5 + i * 0.1 for i in range(20)]
    path = make_video(tmp_path / f"late{extension_for(codec)}", n=20, codec=codec,
                      timestamps=stamps)
    got = decode_video(path, SamplingPlan(fps=2), FMT, backend="pyav")
    assert got.info["start_time"] == pytest.approx(1.5)
    assert got.info["targets"] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert counters(got) == [0, 5, 10, 15]
    assert got.timestamps == pytest.approx([1.5, 2.0, 2.5, 3.0])


def test_missing_duration_falls_back_to_the_packet_index(tmp_path):
    path = make_unseekable_mkv(tmp_path / "live.mkv", n=50, fps=25)
    got = decode_video(path, SamplingPlan(fps=1), FMT, backend="pyav")
    assert got.info["duration_claimed"] is None
    assert got.info["duration"] == pytest.approx(2.0)
    assert counters(got) == [0, 25]


def test_stream_shorter_than_container_samples_only_the_stream(tmp_path):
    path = make_with_audio(tmp_path / "av.mkv", n=25, fps=25, audio_seconds=3.0)
    got = decode_video(path, SamplingPlan(fps=2), FMT, backend="pyav")
    assert got.info["duration_claimed"] == pytest.approx(3.0, abs=0.05)
    assert got.info["duration"] == pytest.approx(1.0)
    assert counters(got) == [0, 12]


def test_truncated_file_decodes_what_is_there(tmp_path, videos):
    whole = make_video(tmp_path / "whole.webm", n=100, fps=25, gop=25, codec="vp9")
    cut = truncate_copy(whole, tmp_path / "cut.webm", 0.5)
    got = decode_video(cut, SamplingPlan(fps=1), FMT, backend="pyav")
    assert 1 <= len(got.frames) < 4
    assert counters(got) == [0, 25, 50, 75][: len(got.frames)]


def noise_over_packets(path, out, which=None):
    """Copy `path` with the payload of the packets numbered in `which` (all if None) replaced
    by noise; the container structure stays intact."""
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    noise = np.random.default_rng(0)
    for k, (pos, size) in enumerate(spans):
        if which is None or k in which:
            data[pos : pos + size] = noise.integers(0, 256, size, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


def test_a_corrupt_target_frame_is_replaced_by_the_previous_target(tmp_path):
    whole = make_video(tmp_path / "clip.avi", n=10, fps=10, codec="mjpeg")
    broken = noise_over_packets(whole, tmp_path / "broken.avi", which={4})
    got = decode_video(broken, SamplingPlan(fps=5), FMT, backend="pyav")
    assert counters(got) == [0, 2, 2, 6, 8]
    assert got.timestamps == pytest.approx([0.0, 0.2, 0.2, 0.6, 0.8])


def test_zero_byte_file_fails_at_open(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(DecodeError) as err:
        decode_video(path, SamplingPlan(), FMT)
    assert err.value.stage == "open"


def test_text_named_mp4_fails_at_open(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are not video bytes\n" * 20)
    with pytest.raises(DecodeError) as err:
        decode_video(path, SamplingPlan(), FMT)
    assert err.value.stage == "open"


def test_audio_only_fails_at_probe(tmp_path):
    path = make_audio_only(tmp_path / "song.mkv")
    with pytest.raises(DecodeError) as err:
        decode_video(path, SamplingPlan(), FMT)
    assert err.value.stage == "probe"
    assert "no video stream" in err.value.reason


def test_video_stream_without_frames_fails_at_probe(tmp_path):
    path = tmp_path / "blank.avi"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        container.start_encoding()
    with pytest.raises(DecodeError) as err:
        decode_video(path, SamplingPlan(), FMT)
    assert err.value.stage == "probe"


def test_truncated_mp4_without_index_fails_at_open(tmp_path, videos):
    cut = truncate_copy(videos["h264"], tmp_path / "cut.mp4", 0.5)
    with pytest.raises(DecodeError) as err:
        decode_video(cut, SamplingPlan(), FMT)
    assert err.value.stage == "open"


def test_corrupt_payload_with_no_decodable_frame_fails_at_decode(tmp_path):
    whole = make_video(tmp_path / "clip.avi", n=5, fps=5, codec="mjpeg")
    broken = noise_over_packets(whole, tmp_path / "broken.avi")
    with pytest.raises(DecodeError) as err:
        decode_video(broken, SamplingPlan(), FMT, backend="pyav")
    assert err.value.stage == "decode"


def test_auto_picks_dali_mixed_on_gpu_and_says_why():
    backend, device, reason = choose_backend("h264", gpu=True)
    assert (backend, device) == ("dali", "mixed") and "GPU" in reason
    backend, device, reason = choose_backend("h264", gpu=False)
    assert backend == "pyav" and "h264" in reason


def test_auto_records_backend_and_reason(videos):
    got = decode_video(videos["h264"], SamplingPlan(fps=1), FMT)
    assert got.info["backend"] in ("pyav", "dali")
    assert got.info["backend_reason"]
    for key in ("container", "codec", "native_fps", "duration", "start_time", "rotation",
                "width", "height", "frames_decoded", "frames_needed", "sampling_mode"):
        assert key in got.info
    assert got.info["codec"] == "h264" and got.info["native_fps"] == pytest.approx(25)


def test_output_size_keeps_aspect_with_even_sides():
    assert output_size(1920, 1080, 256) == (456, 256)
    assert output_size(1080, 1920, 256) == (256, 456)
    assert output_size(64, 48, 256) == (342, 256)


def test_center_crop_and_jpeg_round_trip():
    frame = counter_frames(7, 96, 64)[6]
    cropped = center_crop(frame, 48)
    assert cropped.shape == (48, 48, 3)
    data = encode_jpeg(frame, quality=95)
    assert data[:2] == b"\xff\xd8"
    back = decode_jpeg(data)
    assert psnr(back, frame) > 30 and read_counter(back) == 6


def test_center_crop_is_applied_on_decode(videos):
    got = decode_video(videos["h264"], SamplingPlan(fps=1), FrameFormat(48, center_crop=40),
                       backend="pyav")
    assert all(f.shape == (40, 40, 3) for f in got.frames)
