"""Ray execution of the feature stages on this machine, measured side by side in one run.

1. Scheduling overhead: `c2f extract`'s plans on demo-shaped shards (`make demo`: `c2f synth`
   defaults, 8 videos per shard, 1 fps, its two views) in-process vs on an embedded local Ray
   with one CPU (so both run the plans one at a time): --repeats pairs interleaved A B / B A,
   medians of the per-pair ratios, of wall time and of CPU time (this process, plus every
   process under it for Ray: CPU time does not move with other jobs' load as wall time does).
   Ray's start and its first pass (a cold worker process importing torch) are timed apart.
   Also the time each pass spends outside the plans' own function (the function reports its
   start and end): scheduling proper, apart from how fast the work runs where it lands.
2. Model builds: per backbone worker of the pool (target: once), and how many worker processes
   Ray uses for N GPU-reserving tasks (Ray's default for GPU tasks is a fresh process each).
3. Waiting fraction of the backbone stage in the pool (a CPU model standing in for the GPU,
   decode on the other core): seconds the worker waited for input / seconds it was up,
   counted by the worker from its first batch to its last.
4. Node kill: a `c2f build` on a `ray.cluster_utils.Cluster` (0-CPU head, two worker nodes
   with 1 CPU and 1 logical GPU each); one node is killed without grace once the first part
   exists, a new one joins. Re-done work = shard attempts beyond one per shard, against the
   shards in flight (on either node) at the kill.

Usage: python benchmarks/bench_cluster.py [--videos 12] [--demo-videos 24] [--repeats 3]
       [--sections 1,2,3,4]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cluster.executor import run_plans
from cluster.gpu_pool import PoolSettings, run_pool
from pipeline.build import build_shard, plan_build
from pipeline.extract import ExtractOptions, extract_shard, plan_extraction
from pipeline.manifest import read_manifest
from pipeline.shards import finalize, plan_shards, write_shard
from pipeline.synth import SynthConfig, make_synthetic_dataset
from pipeline.types import FrameFormat, SamplingPlan

SAMPLING = SamplingPlan(fps=1.0)
DEMO_VIEWS = ["coarse=mobilenet_v2@112", "fine=resnet101@224"]  # as cluster/demo.py extracts
FMT = FrameFormat(short_side=128)


class CountedBuild:
    """build_shard that first records each attempt (plan index) in a folder: re-done work is
    visible even when the attempt's worker is killed before it returns."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, plan):
        Path(self.folder, f"{plan.index}-{os.getpid()}-{time.time_ns()}").touch()
        return build_shard(plan)


class InsideTime:
    """fn that also returns its own wall-clock start and end: what a pass spends outside them
    is scheduling (submission, pickling, waiting for a worker, returning the result)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, plan):
        started = time.time()
        result = self.fn(plan)
        return result, started, time.time()


def worker_pid(_: int) -> int:
    time.sleep(0.2)
    return os.getpid()


def make_data(root: Path, videos: int) -> tuple[Path, Path]:
    config = SynthConfig(videos=videos, classes=3, seed=11, width=320, height=240, fps=10.0,
                         min_duration=8.0, max_duration=12.0)
    make_synthetic_dataset(root, config)
    shards = root / "shards"
    for plan in plan_shards(read_manifest(root / "manifest.parquet"), shards, sampling=SAMPLING,
                            fmt=FMT, videos_per_shard=3):
        write_shard(plan)
    finalize(shards)
    return root / "manifest.parquet", shards


def make_demo_shards(root: Path, videos: int) -> Path:
    """Shards shaped like `make demo`'s: `c2f synth` defaults (320x240, 8-20 s), 1 fps, 8
    videos per shard, so each plan carries the work a demo plan does."""
    make_synthetic_dataset(root, SynthConfig(videos=videos, seed=11))
    shards = root / "shards"
    for plan in plan_shards(read_manifest(root / "manifest.parquet"), shards, sampling=SAMPLING,
                            fmt=FrameFormat(short_side=256), videos_per_shard=8):
        write_shard(plan)
    finalize(shards)
    return shards


def tree_cpu_seconds(root: int, with_descendants: bool) -> float:
    """CPU seconds (user + system, and what they reaped) of process `root`, and with
    `with_descendants` of every live process below it (Ray's GCS, raylet, workers)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    keep = {root}
    grew = with_descendants
    while grew:
        below = {pid for pid, (ppid, _) in stats.items() if ppid in keep} - keep
        keep |= below
        grew = bool(below)
    return sum(stats[pid][1] for pid in keep if pid in stats) / os.sysconf("SC_CLK_TCK")


def overhead(shards: Path, work: Path, views: list[str], repeats: int) -> dict:
    """The same extract plans in-process and on a local Ray with 1 CPU (so both run one plan
    at a time), interleaved A B / B A; Ray started once, outside the timed passes (its start
    and the first, cold pass that starts a worker process are timed apart). Per pass: wall
    seconds, and CPU seconds of this process (in-process) or of it and every process Ray runs
    under it (Ray): CPU time does not depend on what other jobs on the machine do."""
    import ray

    options = ExtractOptions(batch_size=32, threads=1)
    me = os.getpid()

    def one_pass(mode: str) -> tuple[float, float, int]:
        store = work / f"store-{mode}"
        shutil.rmtree(store, ignore_errors=True)
        plans = plan_extraction(shards, store, views, options)
        cpu = tree_cpu_seconds(me, mode == "local")
        started = time.time()
        results = run_plans(InsideTime(extract_shard), plans, mode=mode)
        wall = time.time() - started
        inside[mode].append(sum(end - start for _, start, end in results))
        outside[mode].append(wall - inside[mode][-1])
        return wall, tree_cpu_seconds(me, mode == "local") - cpu, len(plans)

    started = time.perf_counter()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    walls: dict[str, list[float]] = {"inprocess": [], "local": []}
    inside: dict[str, list[float]] = {"inprocess": [], "local": []}
    outside: dict[str, list[float]] = {"inprocess": [], "local": []}
    cpus: dict[str, list[float]] = {"inprocess": [], "local": []}
    try:
        cold = one_pass("local")[0]
        one_pass("inprocess")  # warms this process's imports and the page cache alike
        for r in range(repeats):
            for mode in ("inprocess", "local") if r % 2 == 0 else ("local", "inprocess"):
                wall, cpu, plans = one_pass(mode)
                walls[mode].append(wall)
                cpus[mode].append(cpu)
    finally:
        ray.shutdown()
    med = {m: statistics.median(v) for m, v in walls.items()}
    cpu_med = {m: statistics.median(v) for m, v in cpus.items()}
    ratios = [b / a - 1 for a, b in zip(walls["inprocess"], walls["local"], strict=True)]
    cpu_ratios = [b / a - 1 for a, b in zip(cpus["inprocess"], cpus["local"], strict=True)]
    return {"plans": plans, "frames_per_plan": _frames(shards) / plans,
            "inprocess_s": med["inprocess"], "local_ray_s": med["local"],
            "wall_overhead": statistics.median(ratios), "wall_range": (min(ratios), max(ratios)),
            "per_plan_s": (med["local"] - med["inprocess"]) / plans,
            "inprocess_cpu_s": cpu_med["inprocess"], "local_cpu_s": cpu_med["local"],
            "cpu_overhead": statistics.median(cpu_ratios),
            "cpu_range": (min(cpu_ratios), max(cpu_ratios)),
            "ray_start_s": ray_start, "cold_pass_s": cold,
            # Timed passes only (the first two entries are the cold Ray and warm-up passes).
            "outside_share": {m: statistics.median(o / i for o, i in zip(
                outside[m][1:], inside[m][1:], strict=True))
                for m in outside},
            "outside_per_plan_s": {m: statistics.median(outside[m][1:]) / plans
                                   for m in outside}}


def _frames(shards: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_table(shards / "index.parquet", columns=["num_frames"]).column(0).to_pylist())


def builds(shards: Path, work: Path, views: list[str]) -> dict:
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
             log_to_driver=False)
    try:
        plans = plan_extraction(shards, work / "store-pool", views,
                                ExtractOptions(batch_size=16, threads=1))
        stats: list[dict] = []
        run_pool(plans, PoolSettings(pool_size=1, gpus_per_worker=1, cpus_per_worker=1,
                                     decode_cpus=1, prefetch=2), stats=stats)
        pids = run_plans(worker_pid, list(range(6)), mode="local", num_gpus=1)
    finally:
        ray.shutdown()
    return {"pool_workers": len(stats), "builds_per_worker": [s["builds"] for s in stats],
            "views": len(views), "shards": len(plans), "batches": sum(s["batches"] for s in stats),
            "gpu_tasks": 6, "gpu_task_processes": len(set(pids)),
            "wait_fraction": [s["wait_s"] / (s["wait_s"] + s["busy_s"]) for s in stats],
            "busy_s": [s["busy_s"] for s in stats]}


def node_kill(manifest: Path, work: Path, views: list[str]) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from featstore import list_parts

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": {
            "health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
            "health_check_failure_threshold": 2}})
    attempts = work / "attempts"
    attempts.mkdir()
    try:
        nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        out = work / "build"
        plans = plan_build(read_manifest(manifest), out / "shards", out / "store", views,
                           sampling=SAMPLING, fmt=FMT, videos_per_shard=2,
                           extract=ExtractOptions(batch_size=16, threads=1))
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            started = time.perf_counter()
            driver = pool.submit(run_plans, CountedBuild(str(attempts)), plans,
                                 mode="cluster", num_gpus=1, max_retries=3)
            while not list_parts(out / "store") and not driver.done():
                time.sleep(0.05)
            done_at_kill = set(list_parts(out / "store"))
            began = {int(p.name.split("-")[0]) for p in attempts.iterdir()}
            in_flight = len({i for i in began if plans[i].extract.part not in done_at_kill})
            cluster.remove_node(nodes[0], allow_graceful=False)
            cluster.add_node(num_cpus=1, num_gpus=1)
            driver.result(timeout=900)
            seconds = time.perf_counter() - started
        tried = len(list(attempts.iterdir()))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"shards": len(plans), "attempts": tried, "redone": tried - len(plans),
            "in_flight_at_kill": in_flight, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--view", action="append", help="NAME=BACKBONE@SIZE (default one view)")
    ap.add_argument("--sections", default="1,2,3,4")
    ap.add_argument("--demo-videos", type=int, default=24,
                    help="videos of the overhead section's demo-shaped data (make demo: 24)")
    ap.add_argument("--overhead-view", action="append",
                    help="views of the overhead section (default: the demo's two)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    views = args.view or ["v=resnet18@112"]
    sections = {int(s) for s in args.sections.split(",")}
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        manifest, shards = (make_data(work / "data", args.videos) if sections & {2, 3, 4}
                            else (None, None))
        if manifest is not None:
            print(f"{args.videos} generated videos (8-12 s, 320x240) at 1 fps, views {views}")
        print(f"torch 1 thread, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
        print("| measure | figure | target |")
        print("|---|---|---|")
        if 1 in sections:
            demo = make_demo_shards(work / "demo", args.demo_videos)
            r = overhead(demo, work, args.overhead_view or DEMO_VIEWS, args.repeats)
            print(f"| scheduling overhead, {r['plans']} extract plans of demo shape "
                  f"({r['frames_per_plan']:.0f} frames each, views "
                  f"{args.overhead_view or DEMO_VIEWS}), local Ray (1 CPU) vs in-process, "
                  f"median of {args.repeats} interleaved pairs | wall {r['wall_overhead']:+.1%} "
                  f"(pairs {r['wall_range'][0]:+.1%}..{r['wall_range'][1]:+.1%}; "
                  f"{r['local_ray_s']:.1f} s vs {r['inprocess_s']:.1f} s, "
                  f"{r['per_plan_s']:+.2f} s/plan), CPU {r['cpu_overhead']:+.1%} (pairs "
                  f"{r['cpu_range'][0]:+.1%}..{r['cpu_range'][1]:+.1%}; {r['local_cpu_s']:.1f} "
                  f"vs {r['inprocess_cpu_s']:.1f} CPU s) | <= 5% |")
            print(f"| time outside the plans' own function per pass (scheduling), median: "
                  f"local Ray vs in-process | {r['outside_share']['local']:+.2%} "
                  f"({r['outside_per_plan_s']['local']:.3f} s/plan) vs "
                  f"{r['outside_share']['inprocess']:+.2%} "
                  f"({r['outside_per_plan_s']['inprocess']:.3f} s/plan) of the time inside | "
                  f"<= 5% |")
            print(f"| outside the timed passes: Ray start, first (cold) Ray pass | "
                  f"{r['ray_start_s']:.1f} s, {r['cold_pass_s']:.1f} s | - |")
        if sections & {2, 3}:
            r = builds(shards, work, views)
            print(f"| model builds per pool worker ({r['views']} view(s), {r['shards']} shards, "
                  f"{r['batches']} batches) | {r['builds_per_worker']} | once per view |")
            print(f"| worker processes for {r['gpu_tasks']} GPU-reserving tasks (task path) "
                  f"| {r['gpu_task_processes']} | - |")
            print(f"| backbone worker waiting for input (CPU stand-in for the GPU) | "
                  f"{', '.join(f'{w:.1%}' for w in r['wait_fraction'])} of "
                  f"{', '.join(f'{b:.1f}' for b in r['busy_s'])} s busy | <= 10% |")
        if 4 in sections:
            r = node_kill(manifest, work, views)
            print(f"| re-done shards after a node kill ({r['shards']} shards, "
                  f"{r['attempts']} attempts, {r['seconds']:.0f} s) | {r['redone']} | <= in "
                  f"flight at the kill: {r['in_flight_at_kill']} |")
            print(json.dumps(r))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
