"""Target times and frame selection for a SamplingPlan, as pure functions of the packet index.

Time convention (the same in every backend):
- Targets are relative to the stream's first presentation time: target 0.0 is the first frame,
  whatever the container's start time is (MPEG-TS streams often start at 1.4 s or later).
- Returned timestamps are the real pts of the returned frames, in seconds, not shifted.
- `fps F` targets are k/F for k = 0, 1, ... while k/F < duration (1 fps gives 0 s, 1 s, ...).
- `frames T` targets are the centres of T equal segments, (k + 0.5) * duration / T, as in
  TSN/AR-Net test-time sampling.
- `exact` picks the frame on screen at each target: the last frame with pts <= target.
- `keyframe` picks the keyframe nearest to each target (the earlier one on a tie).
- One entry per target: when two targets select the same frame (fps above the native rate, T
  above the frame count), that frame is returned twice. Consumers can rely on
  len(frames) == len(targets) (T mode always yields T frames).

Frame indices here count frames in presentation order (sorted pts), as in the probe's index.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.types import SamplingPlan


def target_times(plan: SamplingPlan, duration: float) -> list[float]:
    """Target times in seconds, relative to the first frame, for a video `duration` long."""
    if not duration > 0:
        return [0.0]
    if plan.frames is not None:
        step = duration / plan.frames
        return [(k + 0.5) * step for k in range(plan.frames)]
    count = max(1, math.ceil(duration * plan.fps - 1e-9))
    return [k / plan.fps for k in range(count)]


def frame_at(frame_pts: Sequence[float], t: float) -> int:
    """Index of the frame displayed at absolute time `t`: last pts <= t (first frame if none)."""
    return max(0, bisect.bisect_right(frame_pts, t + 1e-9) - 1)


def nearest_keyframe(frame_pts: Sequence[float], keyframes: Sequence[int], t: float) -> int:
    """Frame index of the keyframe whose pts is nearest to absolute time `t`."""
    key_pts = [frame_pts[k] for k in keyframes]
    j = bisect.bisect_left(key_pts, t)
    if j == 0:
        return keyframes[0]
    if j == len(keyframes):
        return keyframes[-1]
    before, after = key_pts[j - 1], key_pts[j]
    return keyframes[j - 1] if t - before <= after - t else keyframes[j]


def select_frames(
    frame_pts: Sequence[float], keyframes: Sequence[int], targets: Sequence[float], mode: str
) -> list[int]:
    """Frame index per absolute target time, for sampling mode 'exact' or 'keyframe'."""
    if mode == "keyframe":
        return [nearest_keyframe(frame_pts, keyframes, t) for t in targets]
    return [frame_at(frame_pts, t) for t in targets]


def preceding_keyframe(keyframes: Sequence[int], index: int) -> int:
    """The keyframe a decoder must start from to reconstruct frame `index`."""
    j = bisect.bisect_right(keyframes, index) - 1
    return keyframes[max(j, 0)]


@dataclass(frozen=True)
class DecodeRun:
    """Frames `start`..`stop` (inclusive, presentation order) decoded in one go after one seek:
    `start` is a keyframe, `stop` the last selected frame that depends on it."""

    start: int
    stop: int


def decode_runs(selected: Sequence[int], keyframes: Sequence[int]) -> list[DecodeRun]:
    """Group selected frames by the keyframe they depend on: one seek + forward decode each.

    Frames after the last selected frame of a GOP are never decoded: the decoder jumps to the
    next run's keyframe instead.
    """
    last_by_key: dict[int, int] = {}
    for index in selected:
        key = preceding_keyframe(keyframes, index)
        last_by_key[key] = max(index, last_by_key.get(key, index))
    return [DecodeRun(key, stop) for key, stop in sorted(last_by_key.items())]


def frames_needed(selected: Sequence[int], keyframes: Sequence[int]) -> int:
    """Fewest distinct frames an exact decoder must decode: for each selected frame, all frames
    from its preceding keyframe up to it (union over targets)."""
    return sum(run.stop - run.start + 1 for run in decode_runs(selected, keyframes))
