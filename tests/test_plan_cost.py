"""`c2f plan` on the generated tiny manifest: counts match what a build makes, bytes and times
follow from the given throughputs, missing durations are probed."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from cluster.cli import main as c2f
from pipeline.manifest import ManifestRow, read_manifest, rows_to_table, write_manifest
from pipeline.plan_cost import Throughputs, estimate, frames_per_video
from pipeline.probe import probe_video
from pipeline.types import FrameFormat, SamplingPlan


def test_estimate_counts_bytes_and_overlapping_stages() -> None:
    sampling = SamplingPlan(fps=1.0)
    rates = Throughputs(decode_fps_per_cpu=10.0, images_per_s={"a": 100.0, "b": 50.0})
    cost = estimate([2.0, 2.5, 167.0], sampling, FrameFormat(256),
                    [("a", "mobilenet_v2", 112, 1280), ("b", "resnet101", 224, 2048)], rates,
                    videos_per_shard=2, gpus=2, cpus=4)
    assert cost.frames == 2 + 3 + 167 and cost.shards == 2
    assert [v.store_bytes for v in cost.views] == [172 * 1280 * 2, 172 * 2048 * 2]
    assert cost.views[1].seconds == pytest.approx(172 / (50.0 * 2))
    assert cost.decode_seconds == pytest.approx(172 / 40.0)
    assert cost.wall_seconds == max(cost.decode_seconds, cost.extract_seconds)
    assert cost.gpu_hours == pytest.approx(cost.extract_seconds * 2 / 3600)
    on_cpu = estimate([2.0], sampling, FrameFormat(256), [("a", "mobilenet_v2", 112, 1280)],
                      rates, cpus=1)
    assert on_cpu.wall_seconds == on_cpu.decode_seconds + on_cpu.extract_seconds
    assert frames_per_video(500.0, SamplingPlan(fps=None, frames=16)) == 16


def test_cli_plan_probes_missing_durations_and_measures_what_is_not_given(
    tiny_dataset, tmp_path, capsys
):
    table = read_manifest(tiny_dataset.manifest)
    rows = [ManifestRow(**r) for r in table.to_pylist()]
    rows[0].duration = None
    manifest = write_manifest(rows_to_table(rows), tmp_path / "m.parquet")
    code = c2f(["plan", "--manifest", str(manifest), "--view", "c=mobilenet_v2@48",
                "--view", "f=resnet18@64", "--images-per-s", "f=200", "--gpus", "1",
                "--cpus", "2", "--videos-per-shard", "4", "--json"])
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    durations = [probe_video(rows[0].path).duration] + [r.duration for r in rows[1:]]
    assert info["durations_probed"] == 1 and info["shards"] == 2
    assert info["frames"] == sum(math.ceil(d - 1e-9) for d in durations)
    assert info["views"]["f"]["store_bytes"] == info["frames"] * 512 * 2
    assert info["throughputs"]["images_per_s"]["f"] == 200.0
    assert info["throughputs"]["images_per_s"]["c"] > 0  # measured here
    assert info["throughputs"]["decode_fps_per_cpu"] > 0
    assert "measured on this machine" in info["throughputs"]["source"]
    assert pq.read_table(manifest).num_rows == 6


def test_cli_plan_calibrates_on_a_video_it_can_read_or_says_what_to_give(
    tiny_dataset, tmp_path, capsys
):
    """Planning often runs where the videos are not (a laptop planning a cluster's dataset):
    unreadable videos are passed over for the calibration, and with none readable the user is
    told to give --decode-fps, instead of a traceback."""
    rows = [ManifestRow(**r) for r in read_manifest(tiny_dataset.manifest).to_pylist()]
    rows[0].path = str(tmp_path / "elsewhere.mp4")
    args = ["plan", "--view", "f=resnet18@64", "--images-per-s", "f=200", "--json"]
    manifest = write_manifest(rows_to_table(rows), tmp_path / "m.parquet")
    assert c2f([*args, "--manifest", str(manifest)]) == 0
    assert json.loads(capsys.readouterr().out)["throughputs"]["decode_fps_per_cpu"] > 0
    for row in rows:
        row.path = str(tmp_path / "elsewhere.mp4")
    manifest = write_manifest(rows_to_table(rows), tmp_path / "away.parquet")
    assert c2f([*args, "--manifest", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "cannot measure decoding here" in err and "give --decode-fps" in err
    assert c2f([*args, "--manifest", str(manifest), "--decode-fps", "30"]) == 0
