"""What a user reads while a long stage runs: rates, ETA and the closing summary."""

from __future__ import annotations

import io
from types import SimpleNamespace

from cluster.progress import PipelineCounts, Progress, TaskStageTimes


class FakeClock:
    """A clock the test advances, so rates are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rates_and_eta_count_only_this_runs_work() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(4, total_videos=40, stream=out, clock=clock, interval=1.0)
    progress.update(SimpleNamespace(videos_ok=10, videos_failed=0, frames=100, skipped=True))
    clock.now += 10
    progress.update(SimpleNamespace(videos_ok=9, videos_failed=1, frames=50, skipped=False))
    line = out.getvalue().splitlines()[-1]
    assert "20/40 videos (1 failed)" in line
    assert "1.00 videos/s" in line and "5.0 frames/s" in line  # skipped shard not counted
    assert "ETA 20s" in line  # 20 videos left at 1 video/s
    summary = progress.close()
    assert "(1 already finished)" in summary and "1.00 videos/s" in summary


def test_a_fully_resumed_run_says_nothing_was_left() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(2, total_videos=8, stream=out, clock=clock)
    for _ in range(2):
        progress.update(SimpleNamespace(videos_ok=4, videos_failed=0, frames=40, skipped=True))
    clock.now += 3
    summary = progress.close()
    assert "2/2 shards (2 already finished)" in summary
    assert "nothing left to do" in summary and "videos/s" not in summary


def test_a_pipeline_shows_its_stages_between_finished_shards() -> None:
    clock, out = FakeClock(), io.StringIO()
    counts = PipelineCounts()
    progress = Progress(2, total_videos=8, stream=out, clock=clock, interval=2.0,
                        stages=counts.describe)
    counts.decoding, counts.decoded, counts.queued = 1, 10, 2
    counts.batches, counts.frames = 8, 256
    clock.now += 1
    progress.tick()
    assert out.getvalue() == ""  # not before the interval
    clock.now += 3
    progress.tick()  # no shard finished yet, the stages moved: a line all the same
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("[c2f] 0/2 shards | 0/8 videos")
    assert ("decode: 1 shard(s) now, 10 batches (2.50/s) | backbones: 8 batches (2.00/s), "
            "256 frames (64.0/s), 2 queued | write: 0 part(s) now") in line
    assert "backbones: 8 batches" in progress.close()


def test_build_tasks_report_the_rate_of_each_of_their_stages() -> None:
    clock, out = FakeClock(), io.StringIO()
    times = TaskStageTimes()
    progress = Progress(3, stream=out, clock=clock, stages=times.describe)
    assert "per task" not in progress.status_line()  # nothing measured yet: nothing said
    for result in (SimpleNamespace(frames=40, skipped=False, shard_seconds=2.0,
                                   extract_seconds=8.0),
                   SimpleNamespace(frames=99, skipped=True, shard_seconds=0.0,
                                   extract_seconds=0.0),
                   SimpleNamespace(frames=60, skipped=False, shard_seconds=3.0,
                                   extract_seconds=2.0)):
        times.add(result)
    assert progress.status_line().endswith(
        "per task: shard writing 20.0 frames/s, extraction 10.0 frames/s")
