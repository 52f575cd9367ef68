"""GPU reservations, bounded retries, node loss and driver restarts on a real multi-node Ray.

One `ray.cluster_utils.Cluster` per module: a head with 0 CPUs (work only runs on worker nodes,
as on a real cluster with a CPU-only head) and a worker node advertising 2 logical GPUs. The
backbones run with `--device cpu` while the tasks reserve GPUs, so Ray's GPU assignment is real
even on this CPU machine. Inputs: the session's generated tiny videos plus one poison video that
keeps its decoder busy until the per-video timeout kills the decoder process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from clusters import swapped_in_cluster
from media import make_video
from ray import cloudpickle
from ray.cluster_utils import Cluster

from cluster.cli import main as c2f
from cluster.executor import RunError, run_plans
from cluster.gpu_pool import system_failure, video_decode_site
from cluster.resources import (
    ClusterResourceError,
    TaskResources,
    check_fits,
    concurrent_slots,
    gpus_for_stage,
)
from featstore import list_parts, open_store, part_path, validate
from pipeline.build import build_shard, plan_build
from pipeline.devices import visible_gpu_ids
from pipeline.encode import extension_for
from pipeline.extract import ExtractOptions, finalize_store
from pipeline.failures import FailedPlan, read_failures, remove_orphan_temps, write_failures
from pipeline.manifest import ManifestRow, read_manifest, rows_to_table, write_manifest
from pipeline.shards import finalize
from pipeline.types import FrameFormat, SamplingPlan

# Functions defined here must reach Ray workers by value: tests/ is not importable there.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = Path(__file__).resolve().parents[1]
VIEW = "a=resnet18@64"
BUILD_ARGS = ["--fps", "1", "--short-side", "72", "--videos-per-shard", "3", "--timeout", "3",
              "--view", VIEW, "--batch-size", "4", "--threads", "1"]
FAST_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
              "health_check_failure_threshold": 2}


# ---------------------------------------------------------------- reservation rules, no Ray


def test_reservations_follow_the_device_and_impossible_ones_are_refused() -> None:
    assert gpus_for_stage("cuda", None) == 1.0 and gpus_for_stage("cpu", None) == 0.0
    assert gpus_for_stage("cpu", 0.5) == 0.5  # logical reservation without CUDA
    with pytest.raises(ValueError, match="gpus-per-worker > 0"):
        gpus_for_stage("cuda", 0)
    with pytest.raises(ValueError, match="whole GPUs"):
        TaskResources(num_gpus=1.5)
    no_gpu = {"CPU": 8.0}
    with pytest.raises(ClusterResourceError, match="0 GPU in total"):
        check_fits(no_gpu, no_gpu, TaskResources(1, 1))
    check_fits(no_gpu, no_gpu, TaskResources(1, 0))  # CPU-only stages need no GPU
    assert concurrent_slots({"CPU": 16.0, "GPU": 2.0}, TaskResources(1, 0.5)) == 4
    assert concurrent_slots({"CPU": 16.0, "GPU": 2.0}, TaskResources(2, 0)) == 8


def test_shard_tasks_reserve_gpus_only_when_asked(gpu_cluster, tiny_dataset, tmp_path,
                                                  capsys) -> None:
    """`c2f shards --gpus-per-task` reserves GPUs for NVDEC; one no node can grant is refused
    before any work, with the reason."""
    code = c2f(["shards", "--manifest", str(tiny_dataset.manifest), "--out",
                str(tmp_path / "s"), "--backend", "dali", "--address", gpu_cluster.address,
                "--gpus-per-task", "3"])
    assert code == 2
    assert "reserves 3 GPU, but the Ray cluster has 2" in capsys.readouterr().err
    assert not list((tmp_path / "s").glob("*.tar"))


def test_videos_are_decoded_where_a_gpu_was_reserved_for_it(tiny_dataset, tmp_path,
                                                            capsys) -> None:
    """Only the backbone workers reserve GPUs, so NVDEC decoding goes there; PyAV stays on
    CPU decode tasks; an explicit choice wins; --video-decode workers needs --pool."""
    assert video_decode_site("auto", "dali", "cpu") == "workers"
    assert video_decode_site("auto", "auto", "cuda") == "workers"
    assert video_decode_site("auto", "auto", "cpu") == "tasks"
    assert video_decode_site("auto", "pyav", "cuda") == "tasks"
    assert video_decode_site("tasks", "dali", "cuda") == "tasks"
    with pytest.raises(ValueError, match="video decode site"):
        video_decode_site("gpu", "dali", "cuda")
    assert c2f(["build", "--manifest", str(tiny_dataset.manifest), "--shards-out",
                str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--view", VIEW,
                "--video-decode", "workers"]) == 2
    assert "--video-decode workers needs the worker pool" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_only_failures_of_ray_itself_earn_a_shard_another_attempt() -> None:
    crashed = ray.exceptions.WorkerCrashedError()
    assert system_failure(ray, crashed) and system_failure(ray, ray.exceptions.ActorDiedError())
    # A lost batch reaches the writer task as its argument: still Ray's failure.
    assert system_failure(ray, ray.exceptions.RayTaskError("write_part", "tb", crashed))
    assert not system_failure(ray, ray.exceptions.RayTaskError("decode", "tb", ValueError("x")))
    assert not system_failure(ray, ValueError("x"))


# ------------------------------------------------------------------------ the shared cluster


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[Cluster]:
    """Head without CPUs + one worker node with 2 CPUs and 2 logical GPUs; node deaths are
    noticed within ~1 s. Any Ray the session had running is stopped first and restored after."""
    with swapped_in_cluster({"num_cpus": 0, "include_dashboard": False,
                             "_system_config": FAST_DEATH},
                            [{"num_cpus": 2, "num_gpus": 2}]) as cluster:
        yield cluster


def gpus_seen(plan: tuple[str, int, int]) -> tuple[str, ...]:
    """What a task sees of its GPUs, read while all `peers` tasks hold theirs (a file barrier
    in `folder`), so the assignment of concurrent tasks is what is observed."""
    folder, index, peers = plan
    Path(folder, str(index)).touch()
    deadline = time.monotonic() + 120
    while len(os.listdir(folder)) < peers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tuple(str(i) for i in ray.get_gpu_ids()) == visible_gpu_ids()
    return visible_gpu_ids()


def visible_env(_: object) -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_concurrent_tasks_get_their_own_logical_gpus(gpu_cluster, tmp_path) -> None:
    (tmp_path / "w").mkdir(), (tmp_path / "h").mkdir()
    whole = run_plans(gpus_seen, [(str(tmp_path / "w"), i, 2) for i in range(2)],
                      mode="cluster", num_gpus=1.0)
    assert sorted(whole) == [("0",), ("1",)]
    halves = run_plans(gpus_seen, [(str(tmp_path / "h"), i, 4) for i in range(4)],
                       mode="cluster", num_cpus=0.5, num_gpus=0.5)
    assert sorted(halves) == [("0",), ("0",), ("1",), ("1",)]  # two tasks per GPU
    # A task that reserved no GPU sees none (unset would mean all of them).
    assert run_plans(visible_env, [0], mode="cluster") == [""]
    started = time.monotonic()
    with pytest.raises(ClusterResourceError, match="reserves 3 GPU, but the Ray cluster has 2"):
        run_plans(gpus_seen, [(str(tmp_path), 0, 1)], mode="cluster", num_gpus=3.0)
    assert time.monotonic() - started < 5  # refused up front, not a silent wait


def die_if_poison(plan: tuple[int, str]) -> tuple[str, ...]:
    """Kill the worker process (as a segfault would) for plan 1, after noting the attempt;
    other plans return the GPUs they see."""
    index, attempts_file = plan
    if index == 1:
        with open(attempts_file, "a") as fh:
            fh.write("attempt\n")
        os._exit(11)
    return visible_gpu_ids()


def test_a_worker_that_always_dies_is_retried_a_bounded_number_of_times(gpu_cluster, tmp_path):
    attempts = tmp_path / "attempts"
    plans = [(i, str(attempts)) for i in range(3)]
    with pytest.raises(RunError) as info:
        run_plans(die_if_poison, plans, mode="cluster", num_gpus=0.0, max_retries=1)
    assert info.value.results == [(), None, ()]  # a CPU-only stage reserves no GPU
    (failure,) = info.value.failures
    assert (failure.position, failure.attempts, failure.worker_died) == (1, 2, True)
    assert attempts.read_text().count("attempt") == 2
    row = FailedPlan(1, "shard-000001.tar", "shard-000001", failure.attempts, True,
                     failure.reason)
    write_failures(tmp_path, [row])
    assert read_failures(tmp_path) == [row]
    write_failures(tmp_path, [])
    assert read_failures(tmp_path) == []


# --------------------------------------------------------- builds: node loss, driver restart


@pytest.fixture(scope="module")
def poisoned_manifest(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny dataset plus one video that hangs its decoder until the timeout kills it (a
    valid VP9 file followed by 8 GiB of sparse zeros the demuxer scans)."""
    root = tmp_path_factory.mktemp("poisoned")
    poison = make_video(root / "poison.mkv", n=20, fps=10.0, codec="vp9", size=(64, 48))
    os.truncate(poison, poison.stat().st_size + 8 * 1024**3)
    table = read_manifest(tiny_dataset.manifest)
    rows = [ManifestRow(**r) for r in table.to_pylist()]
    rows.insert(1, ManifestRow("poison", str(poison), rows[0].labels, "train", 2.0))
    return write_manifest(rows_to_table(rows), root / "manifest.parquet")


@pytest.fixture(scope="module")
def reference(poisoned_manifest, tmp_path_factory) -> Path:
    """The same build run in-process, no Ray: what every cluster run must equal."""
    out = tmp_path_factory.mktemp("reference")
    code = c2f(["build", "--manifest", str(poisoned_manifest), "--shards-out",
                str(out / "shards"), "--out", str(out / "store"), "--mode", "inprocess",
                *BUILD_ARGS])
    assert code == 1  # the poison video is an error row; everything else is built
    return out


def assert_same_outputs(out: Path, ref: Path, exact: bool = True) -> None:
    """Same shard bytes, same features (or equal within float16 steps when batches were made
    differently), same errors; no leftovers; store valid."""
    tars = sorted(p.name for p in (ref / "shards").glob("shard-*.tar"))
    assert tars == sorted(p.name for p in (out / "shards").glob("shard-*.tar")) and tars
    for name in tars:
        assert (out / "shards" / name).read_bytes() == (ref / "shards" / name).read_bytes()
    errors = pq.read_table(out / "shards" / "errors.parquet").column("video_id").to_pylist()
    assert errors == ["poison"]
    assert list_parts(out / "store") == list_parts(ref / "store")
    got, want = open_store(out / "store"), open_store(ref / "store")
    assert sorted(got.video_ids()) == sorted(want.video_ids()) and len(want.video_ids()) == 6
    for vid in want.video_ids():
        if exact:
            np.testing.assert_array_equal(got.read(vid, "a"), want.read(vid, "a"))
        else:
            np.testing.assert_allclose(got.read(vid, "a").astype(np.float32),
                                       want.read(vid, "a").astype(np.float32),
                                       rtol=4e-3, atol=2e-3)
    assert validate(out / "store") == []
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def plans_for(manifest: Path, out: Path) -> list:
    return plan_build(read_manifest(manifest), out / "shards", out / "store", [VIEW],
                      sampling=SamplingPlan(fps=1.0), fmt=FrameFormat(72), videos_per_shard=3,
                      timeout_s=3.0, extract=ExtractOptions(batch_size=4, threads=1))


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_build_survives_losing_a_gpu_node(gpu_cluster, poisoned_manifest, reference, tmp_path):
    out = tmp_path / "run"
    plans = plans_for(poisoned_manifest, out)
    with ThreadPoolExecutor(max_workers=1) as pool:
        driver = pool.submit(run_plans, build_shard, plans, mode="cluster", num_gpus=1.0,
                             max_retries=3)
        # The first shard written but not yet its part: that task is in flight on the node.
        wait_for(lambda: (out / "shards" / "shard-000000.tar").exists() or driver.done())
        assert "shard-000000" not in list_parts(out / "store")
        victim = next(n for n in gpu_cluster.worker_nodes)
        gpu_cluster.remove_node(victim, allow_graceful=False)  # mid-run, no grace
        gpu_cluster.add_node(num_cpus=2, num_gpus=2)
        results = driver.result(timeout=240)
    assert [r.index for r in results] == [p.index for p in plans]
    assert all(len(r.gpu_ids) == 1 for r in results if not r.skipped)
    finalize(out / "shards")
    finalize_store(out / "store", [p.extract for p in plans])
    remove_orphan_temps([p.shard.path for p in plans]
                        + [part_path(out / "store", p.extract.part) for p in plans])
    assert_same_outputs(out, reference)


@pytest.mark.slow
def test_driver_killed_mid_build_then_worker_pool_redoes_only_what_is_missing(
    gpu_cluster, poisoned_manifest, reference, tmp_path, capsys
):
    """An in-process `c2f build` killed (SIGKILL) after its first part; re-run on the cluster
    through the backbone worker pool, which builds each model once per worker, keeps the
    finished part and makes the same features (within float16 steps: its batches span
    videos, so they are made of other frames than the in-process path's)."""
    out = tmp_path / "run"
    args = ["build", "--manifest", str(poisoned_manifest), "--shards-out", str(out / "shards"),
            "--out", str(out / "store"), *BUILD_ARGS]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-m", "cluster.cli", *args, "--mode", "inprocess"],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: list_parts(out / "store") or driver.poll() is not None)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    parts = part_path(out / "store", "x").parent
    finished = {p.name: p.stat().st_ino for p in parts.glob("*.h5")}
    assert finished and len(finished) < 3
    capsys.readouterr()
    code = c2f([*args, "--address", gpu_cluster.address, "--pool", "2", "--gpus-per-worker",
                "1", "--cpus-per-worker", "0.5", "--prefetch", "1"])
    printed = capsys.readouterr().err
    assert code == 1, printed  # the poison video is recorded as a failed video, as in-process
    kept = {p.name: p.stat().st_ino for p in parts.glob("*.h5")}
    assert {name: kept[name] for name in finished} == finished  # not redone
    assert f"({len(finished)} already finished)" in printed
    workers = [line for line in printed.splitlines() if line.startswith("[c2f] worker")]
    assert len(workers) == 2 and all("1 model builds" in line for line in workers), printed
    assert {line.split("GPUs ")[1][0] for line in workers} == {"0", "1"}
    index = pq.read_table(out / "shards" / "index.parquet").to_pylist()
    redone = sum(r["num_frames"] for r in index
                 if Path(r["shard"]).stem not in {Path(n).stem for n in finished})
    summary = next(line for line in printed.splitlines() if line.startswith("[c2f] done:"))
    assert f"), {redone} frames (" in summary.split("backbones: ")[1], summary
    assert not (out / "store" / "failures.parquet").exists()
    assert_same_outputs(out, reference, exact=False)


@pytest.mark.slow
@pytest.mark.parametrize("video_decode", ["tasks", "workers"])
def test_pool_build_survives_losing_its_gpu_node(gpu_cluster, poisoned_manifest, reference,
                                                 tmp_path, capsys, caplog, video_decode):
    """`c2f build --pool`: the only worker node (its backbone worker, decode and writer tasks)
    removed without grace while shard 0's batches are on the worker (and, with videos decoded
    on the worker, shard 1 is being written there), then a new node added; the run ends by
    itself (no stall restart: that waits 600 s) with the shards in progress done again and
    every shard and part equal to the in-process run's."""
    out = tmp_path / "run"
    args = ["build", "--manifest", str(poisoned_manifest), "--shards-out", str(out / "shards"),
            "--out", str(out / "store"), *BUILD_ARGS, "--address", gpu_cluster.address,
            "--pool", "1", "--gpus-per-worker", "1", "--cpus-per-worker", "0.5",
            "--prefetch", "1", "--video-decode", video_decode]
    # Tasks: shard 0 written means its batches are about to reach the worker. Workers: the
    # worker is writing shard 0 (its poison video holds the decoder for 3 s).
    started = "shard-000000.tar" if video_decode == "tasks" else ".shard-000000.tar.tmp-*"
    with ThreadPoolExecutor(max_workers=1) as pool:
        driver = pool.submit(c2f, args)
        wait_for(lambda: any((out / "shards").glob(started)) or driver.done())
        assert not driver.done() and len(list_parts(out / "store")) < 3
        for victim in list(gpu_cluster.worker_nodes):
            gpu_cluster.remove_node(victim, allow_graceful=False)
        gpu_cluster.add_node(num_cpus=2, num_gpus=2)
        code = driver.result(timeout=120)
    printed = capsys.readouterr().err
    assert code == 1, printed  # the poison video is a failed video, as in-process
    retried = [r.getMessage() for r in caplog.records if "attempt 2 of 4" in r.getMessage()]
    assert retried and all(m.startswith("shard-00000") for m in retried)
    assert not (out / "store" / "failures.parquet").exists()
    assert_same_outputs(out, reference, exact=False)


@pytest.mark.slow
def test_pool_workers_decode_videos_and_jpegs_with_dali(gpu_cluster, tiny_dataset, tmp_path,
                                                        capsys):
    """The DALI path of `c2f build --pool` that a GPU runs as `mixed` (NVDEC video decode and
    nvJPEG, both on the backbone workers), run here with DALI's CPU backend on the VP9 videos
    (what DALI decodes on CPU): the worker writes the shards itself (--backend dali puts video
    decoding on the workers), the decode tasks ship JPEG bytes, the worker decodes them with
    DALI, and shards and features equal the in-process DALI build's (features within float16
    steps: the pool's batches span videos)."""
    table = read_manifest(tiny_dataset.manifest)
    rows = [ManifestRow(**r) for r in table.to_pylist() if r["path"].endswith(
        extension_for("vp9"))]
    assert len(rows) == 2
    manifest = write_manifest(rows_to_table(rows), tmp_path / "vp9.parquet")
    args = ["--manifest", str(manifest), "--fps", "1", "--short-side", "72", "--view", VIEW,
            "--batch-size", "4", "--threads", "1", "--backend", "dali", "--jpeg-decoder", "dali"]
    ref, out = tmp_path / "ref", tmp_path / "pool"
    assert c2f(["build", *args, "--shards-out", str(ref / "shards"), "--out",
                str(ref / "store"), "--mode", "inprocess"]) == 0
    assert c2f(["build", *args, "--shards-out", str(out / "shards"), "--out",
                str(out / "store"), "--address", gpu_cluster.address, "--pool", "1",
                "--gpus-per-worker", "1", "--cpus-per-worker", "0.5"]) == 0
    printed = capsys.readouterr().err
    index = pq.read_table(out / "shards" / "index.parquet").to_pylist()
    assert {r["backend"] for r in index} == {"dali"}, index
    for tar in sorted((ref / "shards").glob("shard-*.tar")):
        assert (out / "shards" / tar.name).read_bytes() == tar.read_bytes()
    got, want = open_store(out / "store"), open_store(ref / "store")
    assert got.view_attrs("a")["jpeg_decoder"] == "dali-cpu" == want.view_attrs(
        "a")["jpeg_decoder"]
    assert sorted(got.video_ids()) == sorted(want.video_ids()) and len(want.video_ids()) == 2
    for vid in want.video_ids():
        np.testing.assert_allclose(got.read(vid, "a").astype(np.float32),
                                   want.read(vid, "a").astype(np.float32), rtol=4e-3, atol=2e-3)
    frames = sum(r["num_frames"] for r in index)
    assert f"1 model builds, {-(-frames // 4)} batches, {frames} frames decoded here (dali-cpu)" \
        in printed, printed
    assert "2 videos decoded into shards here" in printed, printed
    assert validate(out / "store") == []
