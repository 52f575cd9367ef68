"""Small generated test videos whose frames say which frame they are.

Other test modules import these; the functions below are a stable interface:

- counter_frames(n, width, height): RGB frames; frame i shows i as 8 bit stripes (top half,
  white = 1, most significant bit left) over smooth moving colour waves (bottom half, texture
  for PSNR checks). A red square marks the top-left corner, so orientation is checkable.
- read_counter(rgb): the frame number shown in a decoded (possibly resized) frame.
- make_video(path, ...): write counter frames with pipeline/encode.py (any codec, GOP, VFR
  timestamps, rotation) and return the path.
- make_with_audio(path, ...): an .mkv whose audio runs longer than its video (the container
  claims more duration than the video stream has).
- make_audio_only(path), make_unseekable_mkv(path, ...), truncate_copy(src, dst, fraction).

Everything is generated in the test's tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.encode import write_video

BITS = 8
AUDIO_RATE = 8000


def counter_frames(n: int, width: int = 96, height: int = 64) -> list[np.ndarray]:
    """`n` RGB frames numbered 0..n-1 (n <= 256) in a pattern that survives compression."""
    if n > 2**BITS:
        raise ValueError(f"at most {2**BITS} numbered frames")
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        frame = np.zeros((height, width, 3), np.uint8)
        bottom = ys >= height // 2
        frame[..., 0] = np.where(bottom, 128 + 90 * np.sin((xs + 3 * i) / 9.0), 0)
        frame[..., 1] = np.where(bottom, 128 + 90 * np.cos((ys - 2 * i) / 7.0), 0)
        frame[..., 2] = np.where(bottom, 128 + 60 * np.sin((xs + ys + i) / 6.0), 0)
        stripe = width // BITS
        for bit in range(BITS):
            if (i >> (BITS - 1 - bit)) & 1:
                frame[: height // 2, bit * stripe : (bit + 1) * stripe] = 255
        corner = max(2, min(width, height) // 8)
        frame[:corner, :corner] = (255, 0, 0)
        frames.append(frame)
    return frames


def read_counter(rgb: np.ndarray) -> int:
    """Frame number encoded by counter_frames, read from the middle of each stripe."""
    h, w = rgb.shape[:2]
    stripe = w / BITS
    y = h // 4
    value = 0
    for bit in range(BITS):
        x = int((bit + 0.5) * stripe)
        on = rgb[y - 1 : y + 2, x - 1 : x + 2, 1].mean() > 128
        value = (value << 1) | int(on)
    return value


def make_video(
    path: str | Path,
    n: int = 50,
    fps: float = 25.0,
    codec: str = "h264",
    gop: int | None = None,
    size: tuple[int, int] = (96, 64),
    timestamps: list[float] | None = None,
    rotation: int | None = None,
) -> Path:
    """Write `n` counter frames of `size` (width, height) and return the path.

    With `rotation` (clockwise degrees, mp4 only) the frames are stored turned the other way,
    as a phone camera stores them, so a decoder that applies the rotation gets the upright
    counter frames back (read_counter works on them) and one that ignores it does not.
    """
    frames = counter_frames(n, *size)
    if rotation:
        frames = [np.ascontiguousarray(np.rot90(f, k=rotation // 90)) for f in frames]
    return write_video(path, frames, codec=codec, fps=fps, gop=gop, timestamps=timestamps,
                       rotation=rotation)


def _audio_stream(container: av.container.OutputContainer) -> av.audio.stream.AudioStream:
    stream = container.add_stream("pcm_s16le", rate=AUDIO_RATE)
    stream.layout = "mono"
    return stream


def _write_audio(
    container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float
) -> None:
    samples = int(seconds * AUDIO_RATE)
    chunk = 1000
    for start in range(0, samples, chunk):
        count = min(chunk, samples - start)
        tone = (np.sin(np.arange(start, start + count) * 0.05) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = Fraction(1, AUDIO_RATE)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def _vp9_stream(
    container: av.container.OutputContainer, fps: float, frames: list[np.ndarray]
) -> av.video.stream.VideoStream:
    stream = container.add_stream("libvpx-vp9", rate=Fraction(fps).limit_denominator(1001))
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}
    return stream


def _write_frames(
    container: av.container.OutputContainer,
    stream: av.video.stream.VideoStream,
    frames: list[np.ndarray],
) -> None:
    for i, frame in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts = i
        for packet in stream.encode(vf):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def make_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """A Matroska file (any name) with one audio stream and no video."""
    with av.open(str(path), mode="w", format="matroska") as container:
        _write_audio(container, _audio_stream(container), seconds)
    return Path(path)


def make_with_audio(
    path: str | Path, n: int = 25, fps: float = 25.0, audio_seconds: float = 3.0
) -> Path:
    """An .mkv with `n` VP9 counter frames and a longer audio track: the container's duration
    is the audio's, longer than the video stream."""
    frames = counter_frames(n)
    with av.open(str(path), mode="w", format="matroska") as container:
        video = _vp9_stream(container, fps, frames)
        audio = _audio_stream(container)
        _write_frames(container, video, frames)
        _write_audio(container, audio, audio_seconds)
    return Path(path)


class _Unseekable(io.RawIOBase):
    """A write-only sink without seek: muxers cannot go back to write durations or indexes."""

    def __init__(self, target: io.BufferedWriter) -> None:
        self.target = target

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        return self.target.write(data)


def make_unseekable_mkv(path: str | Path, n: int = 50, fps: float = 25.0) -> Path:
    """A VP9 .mkv written as a stream (no seek back): no duration in its header."""
    frames = counter_frames(n)
    with open(path, "wb") as raw, av.open(_Unseekable(raw), mode="w", format="matroska") as out:
        _write_frames(out, _vp9_stream(out, fps, frames), frames)
    return Path(path)


def truncate_copy(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """Copy the first `fraction` of a file's bytes, as an interrupted download would leave it."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def class_split_shards(root: Path, videos: int, classes: int, train_per_class: int,
                       frames: int, seed: int = 5, videos_per_shard: int = 12) -> Path:
    """Shards of generated stripe-pair videos (pipeline/synth.py) at 48 px, so the stripes
    survive: the first `train_per_class` videos of each class are `train`, the rest `test`."""
    import pyarrow as pa

    from pipeline.manifest import read_manifest
    from pipeline.shards import finalize, plan_shards, write_shard
    from pipeline.synth import SynthConfig, make_synthetic_dataset
    from pipeline.types import FrameFormat, SamplingPlan

    make_synthetic_dataset(root, SynthConfig(videos=videos, classes=classes, seed=seed, width=64,
                                             height=48, fps=8.0, min_duration=2.0,
                                             max_duration=3.0))
    table = read_manifest(root / "manifest.parquet")
    seen: dict[str, int] = {}
    splits = []
    for labels in table.column("labels").to_pylist():
        seen[labels[0]] = seen.get(labels[0], 0) + 1
        splits.append("train" if seen[labels[0]] <= train_per_class else "test")
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(splits))
    out = root / "shards"
    for plan in plan_shards(table, out, sampling=SamplingPlan(fps=None, frames=frames),
                            fmt=FrameFormat(short_side=48), videos_per_shard=videos_per_shard):
        write_shard(plan)
    finalize(out)
    return out
