"""Probe a video: container facts plus a packet index (every frame's pts and which are keyframes).

The index comes from demuxing packets without decoding them, which costs little I/O and no
decode work. It is the source of truth for frame times: timestamps are never derived from an
assumed constant rate, so variable-frame-rate files and streams shorter than their container's
claimed duration are handled by the same code. Only the first frame is decoded, to read the
display rotation that FFmpeg attaches to decoded frames.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from pipeline.types import DecodeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoProbe:
    """What the decoders need to know about one video.

    `frame_ticks` are pts in stream `time_base` units, sorted (presentation order);
    `frame_pts` the same in seconds. `keyframes` are indices into them. `start_time` is the first
    frame's pts in seconds; `duration` spans first pts to the end of the last frame, measured
    from the index; `duration_claimed` is what the container header says (None if absent).
    `rotation` is the clockwise rotation in degrees (0/90/180/270) a player applies to show the
    picture upright; `width`/`height` are the coded (unrotated) size.
    """

    path: str
    container: str
    codec: str
    native_fps: float
    duration: float
    duration_claimed: float | None
    start_time: float
    rotation: int
    width: int
    height: int
    time_base: Fraction
    frame_ticks: tuple[int, ...]
    frame_pts: tuple[float, ...]
    keyframes: tuple[int, ...]

    @property
    def packet_count(self) -> int:
        return len(self.frame_ticks)

    @property
    def keyframe_pts(self) -> list[float]:
        return [self.frame_pts[k] for k in self.keyframes]

    def summary(self) -> dict:
        """Fields recorded in DecodedVideo.info and shard metadata."""
        return {
            "container": self.container,
            "codec": self.codec,
            "native_fps": self.native_fps,
            "duration": self.duration,
            "duration_claimed": self.duration_claimed,
            "start_time": self.start_time,
            "rotation": self.rotation,
            "width": self.width,
            "height": self.height,
            "packet_count": self.packet_count,
            "keyframe_count": len(self.keyframes),
        }


def open_video(path: str | Path) -> av.container.InputContainer:
    """Open a container, turning FFmpeg's errors into DecodeError('open')."""
    path = Path(path)
    if not path.is_file():
        raise DecodeError("open", f"no such file: {path}")
    if path.stat().st_size == 0:
        raise DecodeError("open", f"empty file: {path}")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise DecodeError("open", f"cannot open {path.name}: {exc}") from exc


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream, or DecodeError('probe') for audio-only and other streams."""
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise DecodeError("probe", f"no video stream (streams: {', '.join(kinds)})")
    return container.streams.video[0]


def probe_video(path: str | Path) -> VideoProbe:
    """Read container facts and the packet index of the first video stream."""
    with open_video(path) as container:
        stream = video_stream(container)
        time_base = stream.time_base
        ticks: list[int] = []
        key_ticks: set[int] = set()
        last_duration = 0
        try:
            for packet in container.demux(stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or packet.size == 0 or packet.is_discard:
                    continue
                ticks.append(ts)
                last_duration = packet.duration or 0
                if packet.is_keyframe:
                    key_ticks.add(ts)
        except av.error.FFmpegError as exc:
            # A truncated or damaged file: keep the packets read so far.
            log.warning("demux of %s stopped early: %s", path, exc)
        if not ticks:
            raise DecodeError("probe", "video stream has no frames")
        ticks.sort()
        keyframes = [i for i, t in enumerate(ticks) if t in key_ticks] or [0]
        if keyframes[0] != 0:
            # Frames before the first keyframe cannot be decoded on their own; the decoder
            # starts at the first keyframe, so the earlier ones are not indexed.
            first = keyframes[0]
            ticks = ticks[first:]
            keyframes = [k - first for k in keyframes]
        pts = [float(t * time_base) for t in ticks]
        rate = stream.average_rate or stream.guessed_rate
        gaps = [b - a for a, b in itertools.pairwise(pts) if b > a]
        if last_duration > 0:
            tail = float(last_duration * time_base)
        elif gaps:
            tail = statistics.median(gaps)
        else:
            tail = float(1 / rate) if rate else 0.0
        duration = pts[-1] - pts[0] + tail
        native_fps = float(rate) if rate else (len(pts) / duration if duration > 0 else 0.0)
        if stream.duration:
            claimed: float | None = float(stream.duration * time_base)
        elif container.duration:
            claimed = container.duration / av.time_base
        else:
            claimed = None
        rotation = _first_frame_rotation(container, stream)
        codec = stream.codec_context.name
        return VideoProbe(
            path=str(path),
            container=container.format.name,
            codec=codec,
            native_fps=native_fps,
            duration=duration,
            duration_claimed=claimed,
            start_time=pts[0],
            rotation=rotation,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            time_base=time_base,
            frame_ticks=tuple(ticks),
            frame_pts=tuple(pts),
            keyframes=tuple(keyframes),
        )


def _first_frame_rotation(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> int:
    """Clockwise display rotation, read from the first decodable frame's display matrix."""
    stream.codec_context.thread_count = 1
    try:
        container.seek(0, stream=stream, backward=True, any_frame=False)
        for packet in container.demux(stream):
            frames = packet.decode() if packet.size else stream.codec_context.decode(None)
            if frames:
                return clockwise_rotation(frames[0].rotation)
            if not packet.size:
                break
    except av.error.FFmpegError as exc:
        log.warning("cannot decode a first frame to read rotation: %s", exc)
    return 0


def clockwise_rotation(counter_clockwise: float) -> int:
    """FFmpeg reports the display matrix as a counter-clockwise angle in [-180, 180]; store the
    clockwise angle a player applies, snapped to 0/90/180/270 (the old `rotate` tag's meaning)."""
    return round(-counter_clockwise / 90.0) % 4 * 90
