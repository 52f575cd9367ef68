"""Terminal progress for long runs of plans: videos/s, frames/s and an ETA.

The reporter works off whatever result objects the unit of work returns (duck-typed): it reads
`videos_ok` (or `videos`), `videos_failed`, `frames` and `skipped` when present, so shard writing
and feature extraction share it. It writes to a stream (stderr by default) at most once per
`interval` seconds, because a line per finished plan would flood a terminal on big runs, plus one
summary line at the end. It is a user-facing display, not logging.

A pipeline whose plans take long (the backbone worker pool: one shard can hold hours of video)
passes `stages`, a callable that describes its stages (`PipelineCounts.describe`), and calls
`tick()` as its stages move, so the line also appears between finished plans.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class PipelineCounts:
    """What the stages of the backbone worker pool (cluster/gpu_pool.py) did so far in this run,
    and hold now; the pool's driver updates it in place."""

    decoding: int = 0  # shards whose decode task runs
    decoded: int = 0  # batches the decode tasks handed over
    queued: int = 0  # batches on the backbone workers
    batches: int = 0  # batches through the backbones
    frames: int = 0  # frames through the backbones
    writing: int = 0  # parts being written

    def describe(self, elapsed: float) -> str:
        """Totals, with rates over `elapsed` seconds."""
        t = max(elapsed, 1e-9)
        return (f"decode: {self.decoding} shard(s) now, {self.decoded} batches "
                f"({self.decoded / t:.2f}/s) | backbones: {self.batches} batches "
                f"({self.batches / t:.2f}/s), {self.frames} frames ({self.frames / t:.1f}/s), "
                f"{self.queued} queued | write: {self.writing} part(s) now")


@dataclass
class TaskStageTimes:
    """Where the time of one-task-per-shard `c2f build` plans goes: each result carries its
    seconds writing the shard (decode + JPEG encode) and extracting (JPEG decode + backbones);
    rates are per task, so the slower stage is the one to give more resources."""

    frames: int = 0
    shard_s: float = 0.0
    extract_s: float = 0.0

    def add(self, result: object) -> None:
        """Count a finished plan's stage seconds (plans found finished add nothing)."""
        if getattr(result, "skipped", False) or not hasattr(result, "shard_seconds"):
            return
        self.frames += int(getattr(result, "frames", 0) or 0)
        self.shard_s += float(result.shard_seconds)
        self.extract_s += float(getattr(result, "extract_seconds", 0.0))

    def describe(self, elapsed: float) -> str:
        """Per-task rates of both stages; empty until a plan did work."""
        if not self.frames:
            return ""
        return (f"per task: shard writing {self.frames / max(self.shard_s, 1e-9):.1f} frames/s, "
                f"extraction {self.frames / max(self.extract_s, 1e-9):.1f} frames/s")


class Progress:
    """Count finished plans and report rates; call `update(result)` per finished plan (it fits
    `run_plans(on_result=...)`), `tick()` whenever `stages` may have moved, and `close()` once
    at the end."""

    def __init__(
        self,
        total_plans: int,
        total_videos: int | None = None,
        *,
        unit: str = "shards",
        interval: float = 2.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        stages: Callable[[float], str] | None = None,
    ) -> None:
        self.total_plans = total_plans
        self.total_videos = total_videos
        self.unit = unit
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.start = clock()
        self.last_report = self.start
        self.plans = 0
        self.skipped = 0
        self.videos_ok = 0
        self.videos_failed = 0
        self.frames = 0
        self.work_videos = 0  # videos processed in this run (not in skipped plans)
        self.work_frames = 0
        self.lines_written = 0
        self.stages = stages

    def update(self, result: object) -> None:
        ok = int(getattr(result, "videos_ok", getattr(result, "videos", 0)) or 0)
        failed = int(getattr(result, "videos_failed", 0) or 0)
        frames = int(getattr(result, "frames", 0) or 0)
        self.plans += 1
        self.videos_ok += ok
        self.videos_failed += failed
        self.frames += frames
        if getattr(result, "skipped", False):
            self.skipped += 1
        else:
            self.work_videos += ok + failed
            self.work_frames += frames
        self.tick()

    def tick(self) -> None:
        """Write the status line if `interval` seconds passed since the last one."""
        now = self.clock()
        if now - self.last_report >= self.interval:
            self.last_report = now
            self._write(self.status_line(now))

    def status_line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        video_rate = self.work_videos / elapsed
        frame_rate = self.work_frames / elapsed
        parts = [f"{self.plans}/{self.total_plans} {self.unit}"]
        done = self.videos_ok + self.videos_failed
        videos = f"{done}/{self.total_videos} videos" if self.total_videos else f"{done} videos"
        if self.videos_failed:
            videos += f" ({self.videos_failed} failed)"
        parts.append(videos)
        parts.append(f"{video_rate:.2f} videos/s")
        parts.append(f"{frame_rate:.1f} frames/s")
        eta = self.eta(elapsed)
        parts.append(f"ETA {_fmt_duration(eta)}" if eta is not None else "ETA ?")
        stages = self.stages(elapsed) if self.stages is not None else ""
        if stages:
            parts.append(stages)
        return " | ".join(parts)

    def eta(self, elapsed: float) -> float | None:
        """Seconds left at the current rate: by videos when the total is known, else by plans."""
        worked = self.plans - self.skipped
        if self.plans >= self.total_plans:
            return 0.0
        if self.total_videos and self.work_videos:
            left = self.total_videos - self.videos_ok - self.videos_failed
            return max(left, 0) * elapsed / self.work_videos
        if worked:
            return (self.total_plans - self.plans) * elapsed / worked
        return None

    def summary(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rates = (
            f"{self.work_videos / elapsed:.2f} videos/s, {self.work_frames / elapsed:.1f} frames/s"
            if self.work_videos
            else "nothing left to do"
        )
        line = (
            f"done: {self.plans}/{self.total_plans} {self.unit} ({self.skipped} already finished), "
            f"{self.videos_ok} videos ok, {self.videos_failed} failed, {self.frames} frames in "
            f"{_fmt_duration(elapsed)} ({rates})"
        )
        stages = self.stages(elapsed) if self.stages is not None else ""
        return f"{line} | {stages}" if stages else line

    def close(self) -> str:
        """Write and return the summary line."""
        line = self.summary()
        self._write(line)
        return line

    def _write(self, line: str) -> None:
        self.stream.write(f"[c2f] {line}\n")
        self.stream.flush()
        self.lines_written += 1
