"""`c2f plan`: what a `c2f build` of a manifest will make and cost, before running it.

Counts come from the same code the build runs: frames per video from `sampling.target_times`,
shard sizes from `shards.estimate_video_bytes`, feature widths from the backbones themselves.
Times come from throughputs: measured by a short calibration run in this process (decode one of
the manifest's own videos; forward a few batches of each view), or given by the caller. Stages
stream (decode of shard k+1 overlaps the backbones on shard k), so the wall time is the slower
stage's time, not the sum.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.sampling import target_times
from pipeline.types import DecodeError, FrameFormat, SamplingPlan

log = logging.getLogger(__name__)

FLOAT16_BYTES = 2


@dataclass(frozen=True)
class Throughputs:
    """Per-worker rates: sampled frames/s one CPU core decodes and JPEG-encodes, and images/s
    one backbone worker (one GPU, or one CPU core when there are no GPUs) runs per view."""

    decode_fps_per_cpu: float
    images_per_s: Mapping[str, float]
    source: str = "given"


@dataclass(frozen=True)
class ViewCost:
    name: str
    backbone: str
    input_size: int
    dim: int
    store_bytes: int
    seconds: float  # on all backbone workers together


@dataclass(frozen=True)
class CostPlan:
    videos: int
    probed: int  # videos whose duration was missing and had to be probed
    frames: int
    shards: int
    shard_bytes: int
    views: list[ViewCost]
    decode_seconds: float
    extract_seconds: float
    wall_seconds: float
    gpu_hours: float
    throughputs: Throughputs
    resources: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "videos": self.videos, "durations_probed": self.probed, "frames": self.frames,
            "shards": self.shards, "shard_bytes": self.shard_bytes,
            "store_bytes": sum(v.store_bytes for v in self.views),
            "views": {v.name: {"backbone": f"{v.backbone}@{v.input_size}", "dim": v.dim,
                               "store_bytes": v.store_bytes, "seconds": round(v.seconds, 1)}
                      for v in self.views},
            "decode_seconds": round(self.decode_seconds, 1),
            "extract_seconds": round(self.extract_seconds, 1),
            "wall_seconds": round(self.wall_seconds, 1), "gpu_hours": round(self.gpu_hours, 2),
            "resources": self.resources,
            "throughputs": {"decode_fps_per_cpu": self.throughputs.decode_fps_per_cpu,
                            "images_per_s": dict(self.throughputs.images_per_s),
                            "source": self.throughputs.source},
        }


def durations(manifest: pa.Table) -> tuple[list[float], int]:
    """Each video's duration in seconds, probing the files whose manifest row has none."""
    from pipeline.probe import probe_video

    out, probed = [], 0
    for path, duration in zip(manifest.column("path").to_pylist(),
                              manifest.column("duration").to_pylist()):
        if duration is None:
            duration = probe_video(path).duration
            probed += 1
        out.append(float(duration))
    return out, probed


def frames_per_video(duration: float, sampling: SamplingPlan) -> int:
    """Frames the build samples from a video of this duration (the build's own rule)."""
    if sampling.frames is not None:
        return sampling.frames
    return len(target_times(sampling, duration))


def estimate(
    video_durations: Sequence[float],
    sampling: SamplingPlan,
    fmt: FrameFormat,
    views: Sequence[tuple[str, str, int, int]],
    throughputs: Throughputs,
    *,
    videos_per_shard: int = 64,
    gpus: int = 0,
    cpus: int = 1,
    probed: int = 0,
) -> CostPlan:
    """The plan of a build: `views` as (name, backbone, input_size, feature dim).

    Backbone workers are the GPUs, or the CPUs when `gpus` is 0 (then decode and backbones
    share the cores, so their times add up instead of overlapping).
    """
    from pipeline.shards import estimate_video_bytes

    if cpus < 1 or gpus < 0 or videos_per_shard < 1:
        raise ValueError("need cpus >= 1, gpus >= 0, videos_per_shard >= 1")
    frames = sum(frames_per_video(d, sampling) for d in video_durations)
    shard_bytes = sum(estimate_video_bytes(d, sampling, fmt) for d in video_durations)
    workers = gpus or cpus
    view_costs = []
    for name, backbone, size, dim in views:
        rate = throughputs.images_per_s[name]
        view_costs.append(ViewCost(name, backbone, size, dim, frames * dim * FLOAT16_BYTES,
                                   frames / (rate * workers)))
    decode = frames / (throughputs.decode_fps_per_cpu * cpus)
    extract = sum(v.seconds for v in view_costs)
    wall = max(decode, extract) if gpus else decode + extract
    return CostPlan(
        videos=len(video_durations), probed=probed, frames=frames,
        shards=math.ceil(len(video_durations) / videos_per_shard), shard_bytes=shard_bytes,
        views=view_costs, decode_seconds=decode, extract_seconds=extract, wall_seconds=wall,
        gpu_hours=extract * gpus / 3600 if gpus else 0.0, throughputs=throughputs,
        resources={"gpus": gpus, "cpus": cpus},
    )


def measure_decode(paths: Sequence[str], sampling: SamplingPlan, fmt: FrameFormat,
                   backend: str = "pyav", tries: int = 5) -> float:
    """Sampled frames/s of decoding + JPEG-encoding one video on this core: the first of the
    first `tries` paths that decodes here (planning often runs where some, or all, videos are
    not reachable). DecodeError naming the last reason when none does."""
    from pipeline.shard_worker import decode_and_encode

    error = DecodeError("open", "no videos to measure")
    for path in list(paths)[:tries]:
        started = time.perf_counter()
        try:
            encoded = decode_and_encode(path, sampling, fmt, backend)
        except DecodeError as exc:
            error = exc
            continue
        return len(encoded.jpegs) / (time.perf_counter() - started)
    raise DecodeError(error.stage, f"none of the first {tries} videos decodes here; last: "
                      f"{error.reason}")


def measure_view(backbone: str, size: int, device: str = "cpu", batch: int = 8,
                 repeats: int = 2) -> float:
    """Images/s of one backbone at one input size on `device`: the median of `repeats` timed
    forwards of a `batch` after one warm-up forward."""
    import statistics

    import torch

    from pipeline.extract import ExtractView, forward_batch, load_view

    lv = load_view(ExtractView("calibration", backbone, size), device)
    x = torch.randn(batch, 3, size, size)
    forward_batch(lv, x, "float32", device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        forward_batch(lv, x, "float32", device)
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)
