"""What `c2f synth` generates (pipeline/synth.py explains why the data looks as it does).

Apart from the generator, which needs numpy, PyAV and pyarrow, so that `c2f synth --help` can
show the defaults without loading them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Durations are drawn uniformly per video in [min_duration,
    max_duration] seconds; width and height must be even and at least 16."""

    videos: int = 24
    classes: int = 4
    seed: int = 0
    width: int = 320
    height: int = 240
    fps: float = 10.0
    min_duration: float = 8.0
    max_duration: float = 20.0
    codecs: tuple[str, ...] = ("h264", "vp9", "mjpeg")
    multi_label_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.videos < 1 or self.classes < 1:
            raise ValueError("need at least one video and one class")
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 16:
            raise ValueError("width and height must be even and at least 16")
        if not 0 < self.min_duration <= self.max_duration:
            raise ValueError("need 0 < min_duration <= max_duration")
