"""Target times and frame selection, as pure functions on hand-written packet indexes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sampling import (
    DecodeRun,
    decode_runs,
    frame_at,
    frames_needed,
    nearest_keyframe,
    select_frames,
    target_times,
)
from pipeline.types import SamplingPlan


def test_fps_targets_start_at_zero_and_stop_before_duration():
    assert target_times(SamplingPlan(fps=1), 4.0) == [0.0, 1.0, 2.0, 3.0]
    assert target_times(SamplingPlan(fps=1), 4.2) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert target_times(SamplingPlan(fps=2), 1.5) == [0.0, 0.5, 1.0]


def test_fps_targets_for_a_clip_shorter_than_one_period_keep_the_first_frame():
    assert target_times(SamplingPlan(fps=1), 0.3) == [0.0]


def test_frames_targets_are_segment_centres():
    assert target_times(SamplingPlan(fps=None, frames=4), 8.0) == [1.0, 3.0, 5.0, 7.0]


def test_frames_mode_always_gives_t_targets():
    assert len(target_times(SamplingPlan(fps=None, frames=16), 0.2)) == 16


def test_frame_at_returns_the_frame_on_screen():
    pts = [0.0, 0.1, 0.35, 0.4]
    assert frame_at(pts, 0.0) == 0
    assert frame_at(pts, 0.34) == 1
    assert frame_at(pts, 0.35) == 2
    assert frame_at(pts, 9.0) == 3


def test_nearest_keyframe_prefers_the_earlier_on_a_tie():
    pts = [float(i) for i in range(10)]
    keys = [0, 4, 8]
    assert nearest_keyframe(pts, keys, 2.0) == 0
    assert nearest_keyframe(pts, keys, 2.1) == 4
    assert nearest_keyframe(pts, keys, 30.0) == 8


def test_duplicate_targets_keep_one_entry_each():
    pts = [0.0, 1.0]
    assert select_frames(pts, [0], [0.0, 0.25, 0.5, 1.0], "exact") == [0, 0, 0, 1]


def test_decode_runs_stop_at_the_last_selected_frame_of_each_gop():
    keys = [0, 10, 20]
    assert decode_runs([3, 7, 12, 7], keys) == [DecodeRun(0, 7), DecodeRun(10, 12)]


def test_frames_needed_counts_keyframe_to_target_union():
    keys = [0, 10, 20]
    assert frames_needed([3, 7, 12], keys) == 8 + 3
    assert frames_needed([20, 20], keys) == 1


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(0.01, 0.5), min_size=1, max_size=60),
    gop=st.integers(1, 12),
    fps=st.floats(0.2, 10.0),
)
def test_exact_selection_never_picks_a_future_frame(gaps, gop, fps):
    pts = [0.0]
    for gap in gaps:
        pts.append(pts[-1] + gap)
    keys = list(range(0, len(pts), gop))
    duration = pts[-1] + gaps[-1]
    targets = target_times(SamplingPlan(fps=fps), duration)
    chosen = select_frames(pts, keys, targets, "exact")
    assert len(chosen) == len(targets)
    for t, i in zip(targets, chosen):
        assert pts[i] <= t + 1e-9
        assert i == len(pts) - 1 or pts[i + 1] > t
    assert frames_needed(chosen, keys) <= len(pts)


def test_plan_rejects_both_fps_and_frames():
    with pytest.raises(ValueError):
        SamplingPlan(fps=1.0, frames=4)
