"""CPU decoding with PyAV that decodes only the frames a sampling plan needs.

For each run of selected frames that depend on one keyframe (see sampling.decode_runs) the
decoder seeks to that keyframe, feeds packets in decode order until the last selected frame's
packet has been sent, drains the decoder and drops its state. Frames after the last target of a
GOP are never decoded. In keyframe mode each run is one keyframe packet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import av
import numpy as np

from pipeline.imageops import frame_to_rgb
from pipeline.probe import VideoProbe, open_video, video_stream
from pipeline.sampling import DecodeRun, decode_runs
from pipeline.types import DecodeError, FrameFormat

log = logging.getLogger(__name__)

THREAD_TYPES = ("SLICE", "FRAME", "AUTO")


@dataclass(frozen=True)
class PyAVOptions:
    """Decoder threading: `threads=0` lets FFmpeg pick (one per core); benchmarks pin 1."""

    threads: int = 0
    thread_type: str = "AUTO"

    def __post_init__(self) -> None:
        if self.thread_type not in THREAD_TYPES:
            raise ValueError(f"thread_type must be one of {THREAD_TYPES}")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")


@dataclass
class _Best:
    """The latest decoded frame at or before one target pts."""

    frame: av.VideoFrame | None = None
    ticks: int = -(2**62)


def decode_selected(
    probe: VideoProbe,
    selected: list[int],
    fmt: FrameFormat,
    options: PyAVOptions | None = None,
) -> tuple[list[np.ndarray], list[float], int]:
    """Decode the frames at `selected` indices (presentation order, repeats allowed).

    Returns RGB frames and their real pts (seconds), one per entry of `selected`, and the number
    of frames the decoder produced. Frames are resized as soon as their run is decoded, so only
    one GOP's targets are ever held at source size. If a target's frame fails to decode, the
    latest decoded frame before it within its GOP stands in, else the nearest earlier target's
    frame (the first target's: the next one), with that frame's real pts; if nothing decodes,
    DecodeError('decode').
    """
    options = options or PyAVOptions()
    wanted = sorted(set(selected))
    out: dict[int, tuple[np.ndarray, float]] = {}
    decoded = failures = 0
    with open_video(probe.path) as container:
        stream = video_stream(container)
        ctx = stream.codec_context
        ctx.thread_type = options.thread_type
        ctx.thread_count = options.threads
        for run in decode_runs(selected, probe.keyframes):
            targets = [i for i in wanted if run.start <= i <= run.stop]
            best = {i: _Best() for i in targets}
            container.seek(probe.frame_ticks[run.start], stream=stream, backward=True,
                           any_frame=False)
            n, bad = _decode_run(container, stream, probe, run, best)
            decoded += n
            failures += bad
            ctx.flush_buffers()
            for i, b in best.items():
                if b.frame is not None:
                    out[i] = (frame_to_rgb(b.frame, fmt, probe.rotation),
                              float(b.ticks * probe.time_base))
    if failures:
        log.warning("%s: %d packets failed to decode", probe.path, failures)
    if not out:
        raise DecodeError("decode", f"no frame could be decoded ({failures} packet errors)")
    have = sorted(out)
    frames: list[np.ndarray] = []
    stamps: list[float] = []
    for i in selected:
        if i not in out:
            earlier = [j for j in have if j < i]
            out[i] = out[earlier[-1] if earlier else have[0]]
        frames.append(out[i][0])
        stamps.append(out[i][1])
    return frames, stamps, decoded


def _decode_run(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    probe: VideoProbe,
    run: DecodeRun,
    best: dict[int, _Best],
) -> tuple[int, int]:
    """Decode one run (the container was just seeked to its keyframe); returns (frames
    decoded, packets that failed to decode)."""
    ctx = stream.codec_context
    last_tick = probe.frame_ticks[run.stop]
    start_tick = probe.frame_ticks[run.start]
    target_ticks = [(i, probe.frame_ticks[i]) for i in best]
    unsent = {ticks for _, ticks in target_ticks}
    decoded = failures = 0

    def take(frames: list[av.VideoFrame]) -> None:
        for frame in frames:
            ticks = frame.pts if frame.pts is not None else frame.dts
            if ticks is None:
                continue
            for i, target in target_ticks:
                if best[i].ticks < ticks <= target:
                    best[i].frame, best[i].ticks = frame, ticks

    for packet in container.demux(stream):
        ts = packet.pts if packet.pts is not None else packet.dts
        if not packet.size or ts is None:
            break  # end of stream
        if packet.is_discard:
            continue
        if packet.is_keyframe and ts > last_tick and ts != start_tick:
            break  # the last wanted packet is missing; the next GOP starts here
        try:
            frames = ctx.decode(packet)
        except av.error.FFmpegError as exc:
            log.debug("packet at %s failed: %s", ts, exc)
            failures += 1
            frames = []
        decoded += len(frames)
        take(frames)
        unsent.discard(ts)
        if not unsent:
            break  # every target's packet is in; frames after them are not needed
    try:
        frames = ctx.decode(None)
    except av.error.FFmpegError as exc:
        log.debug("drain failed: %s", exc)
        frames = []
    decoded += len(frames)
    take(frames)
    return decoded, failures
