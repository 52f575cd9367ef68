"""Plain data types shared by the ingest stages (sampling → decode → resize → encode → shard)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SAMPLING_MODES = ("exact", "keyframe")


@dataclass(frozen=True)
class SamplingPlan:
    """Which frames to take from a video.

    `fps` samples at a fixed rate (LiteEval/FCVID protocol: 1 fps); `frames` takes T frames
    uniformly over the video (AR-Net/SoF-Net protocol: T=16). Exactly one of them is set.
    `mode='exact'` returns the frame shown at each target time; `mode='keyframe'` returns the
    nearest keyframes and decodes nothing else.
    """

    fps: float | None = 1.0
    frames: int | None = None
    mode: str = "exact"

    def __post_init__(self) -> None:
        if (self.fps is None) == (self.frames is None):
            raise ValueError("set exactly one of fps and frames")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class FrameFormat:
    """How sampled frames are stored: short side after resize (aspect kept), optional centre
    crop, and JPEG quality. Recorded in every shard sample."""

    short_side: int = 256
    center_crop: int | None = None
    jpeg_quality: int = 90


@dataclass
class DecodedVideo:
    """Frames of one video as RGB uint8 arrays (already resized), with their real timestamps
    in seconds and a metadata dict (container, codec, native_fps, duration, backend,
    backend_reason, frames_decoded, rotation, ...)."""

    frames: list[np.ndarray]
    timestamps: list[float]
    info: dict = field(default_factory=dict)


class DecodeError(Exception):
    """A video could not be decoded; `stage` says where (open, probe, decode, encode, timeout)."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
