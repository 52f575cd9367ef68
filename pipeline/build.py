"""`c2f build`: manifest -> shards -> feature store in one pass per shard.

Each BuildPlan writes one shard (decoding its videos once) and then extracts that shard's
features from the tar it just wrote, in the same task, while the tar is still in the page
cache. Reading the stored JPEGs rather than the frames before JPEG encoding keeps a built store
identical to running `c2f shards` then `c2f extract`. Both halves skip finished outputs, so a
re-run resumes wherever the last run stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from pipeline.extract import (
    ExtractOptions,
    ExtractPlan,
    ExtractView,
    extract_shard,
    make_extract_plans,
)
from pipeline.shards import ShardPlan, plan_shards, write_shard
from pipeline.types import FrameFormat, SamplingPlan


@dataclass(frozen=True)
class BuildPlan:
    """One shard to write and the part to extract from it."""

    index: int
    shard: ShardPlan
    extract: ExtractPlan


@dataclass(frozen=True)
class BuildResult:
    """Counts of both halves; `skipped` when both the shard and the part already existed."""

    index: int
    part: str
    videos_ok: int
    videos_failed: int
    frames: int
    skipped: bool
    seconds: float
    shard_seconds: float
    extract_seconds: float
    gpu_ids: tuple[str, ...] = ()


def plan_build(
    manifest: pa.Table,
    shards_dir: str | os.PathLike,
    store_dir: str | os.PathLike,
    views: Sequence[ExtractView | str],
    *,
    sampling: SamplingPlan,
    fmt: FrameFormat,
    backend: str = "auto",
    videos_per_shard: int = 64,
    target_bytes: int | None = None,
    timeout_s: float = 120.0,
    extract: ExtractOptions | None = None,
) -> list[BuildPlan]:
    """Shard plans as `plan_shards` makes them, each paired with its extraction plan."""
    shard_plans = plan_shards(
        manifest,
        shards_dir,
        sampling=sampling,
        fmt=fmt,
        backend=backend,
        videos_per_shard=videos_per_shard,
        target_bytes=target_bytes,
        timeout_s=timeout_s,
    )
    extract_plans = make_extract_plans(
        [p.path for p in shard_plans], store_dir, views, extract or ExtractOptions()
    )
    return [BuildPlan(s.index, s, e) for s, e in zip(shard_plans, extract_plans)]


def build_shard(plan: BuildPlan) -> BuildResult:
    """Write the shard (or find it done), then extract its part (or find it done)."""
    started = time.perf_counter()
    shard = write_shard(plan.shard)
    extracted = extract_shard(plan.extract)
    return BuildResult(
        index=plan.index,
        part=plan.extract.part,
        videos_ok=shard.videos_ok,
        videos_failed=shard.videos_failed,
        frames=extracted.frames,
        skipped=shard.skipped and extracted.skipped,
        seconds=time.perf_counter() - started,
        shard_seconds=shard.seconds,
        extract_seconds=extracted.seconds,
        gpu_ids=extracted.gpu_ids,
    )
