"""Flags and outcomes shared by the stages that run backbones (`c2f extract`, `c2f build`):
GPUs reserved per task, bounded retries of dead workers, and the failures table."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def add_gpu_args(p: argparse.ArgumentParser) -> None:
    """--gpus-per-worker and --max-retries."""
    p.add_argument("--gpus-per-worker", type=float, default=None, metavar="N",
                   help="GPUs Ray reserves per backbone task; fractions share a GPU (0.5: two "
                   "tasks per GPU). Default 1 with --device cuda, 0 with --device cpu; with "
                   "--device cpu a value > 0 reserves GPU slots without using CUDA")
    p.add_argument("--max-retries", type=int, default=3, metavar="N",
                   help="re-runs of a task whose worker died (crash, OOM kill, lost node) before "
                   "its shard is recorded in OUT/failures.parquet (%(default)s); a task that "
                   "raises is not retried")
    p.add_argument("--pool", type=int, default=0, metavar="N",
                   help="run the backbones in N long-lived Ray workers that build each model "
                   "once, fed fixed-size batches (--batch-size, spanning videos) by CPU decode "
                   "tasks (--cpus-per-task each), the next shard decoded while the current one "
                   "runs; with a DALI --jpeg-decoder the workers decode the JPEGs themselves "
                   "(nvJPEG on CUDA), and with `c2f build --backend dali` the videos too (NVDEC "
                   "on CUDA; see --video-decode); 0: one task per shard that decodes and runs "
                   "the models itself (%(default)s)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="N",
                   help="with --pool: CPUs each backbone worker holds for its life "
                   "(%(default)s)")
    p.add_argument("--prefetch", type=int, default=2, metavar="N",
                   help="with --pool: batches queued per worker before decoding pauses "
                   "(%(default)s)")
    p.add_argument("--decode-ahead", type=int, default=2, metavar="N",
                   help="with --pool: shards being decoded per worker, so the next shard is "
                   "ready when one ends; with videos decoded on the workers, the shards each "
                   "worker writes at once (%(default)s)")


def resolve_stage_resources(args: argparse.Namespace) -> None:
    """Set args.num_gpus from --device/--gpus-per-worker; in-process runs check CUDA here,
    since this process is the worker. Raises ValueError/RuntimeError for bad settings."""
    from cluster.resources import gpus_for_stage

    args.num_gpus = gpus_for_stage(args.device, args.gpus_per_worker)
    if args.max_retries < 0:
        raise ValueError(f"--max-retries must be >= 0, got {args.max_retries}")
    if args.pool < 0 or args.prefetch < 1 or args.decode_ahead < 1:
        raise ValueError("--pool must be >= 0, --prefetch and --decode-ahead >= 1")
    if args.pool and args.mode == "inprocess":
        raise ValueError("--pool runs on Ray: use --mode local or cluster")
    if getattr(args, "video_decode", "auto") == "workers" and not args.pool:
        raise ValueError("--video-decode workers needs the worker pool: add --pool N")
    if args.mode == "inprocess" and args.address is None:
        from pipeline.devices import worker_device

        worker_device(args.device)


def failures_writer(store: str | os.PathLike, plans: Sequence) -> Callable[[list], None]:
    """An on_failures callback writing STORE/failures.parquet for extract or build plans."""

    def write(failures: list) -> None:
        from pipeline.failures import FailedPlan, write_failures

        rows = []
        for f in failures:
            plan = getattr(f.plan, "extract", f.plan)  # a BuildPlan carries its ExtractPlan
            rows.append(FailedPlan(plan.index, str(plan.shard), plan.part, f.attempts,
                                   f.worker_died, f.reason))
        path = write_failures(store, rows)
        print(f"failed shards recorded in {path}", file=sys.stderr)

    return write


def run_pool_with_progress(fn: Callable, plans: Sequence, args: argparse.Namespace,
                           total_videos: int | None, name: str,
                           on_failures: Callable[[list], None] | None = None) -> bool:
    """As running.run_with_progress, through the backbone worker pool (`fn` is not used: the
    pool runs the same stages split across decode tasks, workers and writer tasks)."""
    from cluster.executor import RunError
    from cluster.gpu_pool import PoolSettings, run_pool, video_decode_site
    from cluster.progress import PipelineCounts, Progress

    site = "tasks"
    if hasattr(args, "video_decode"):  # `c2f build`: its videos are decoded too
        site = video_decode_site(args.video_decode, args.backend, args.device)
    settings = PoolSettings(pool_size=args.pool, gpus_per_worker=args.num_gpus,
                            cpus_per_worker=args.cpus_per_worker,
                            decode_cpus=args.cpus_per_task, prefetch=args.prefetch,
                            decode_ahead=args.decode_ahead, max_retries=args.max_retries,
                            video_decode=site)
    counts = PipelineCounts()
    progress = Progress(len(plans), total_videos=total_videos, unit="shards",
                        stages=counts.describe)
    mode = args.mode if args.address is None or args.mode != "local" else "cluster"
    stats: list[dict] = []
    try:
        run_pool(plans, settings, mode=mode, address=args.address, on_result=progress.update,
                 stats=stats, counts=counts, on_tick=progress.tick)
    except RunError as exc:
        progress.close()
        if on_failures is not None:
            on_failures(exc.failures)
        print(f"c2f {name}: {exc}\nre-run the same command to finish the failed shards "
              "(finished ones are kept and skipped)", file=sys.stderr)
        return False
    progress.close()
    for i, s in enumerate(stats):
        busy = s["busy_s"] / max(s["busy_s"] + s["wait_s"], 1e-9)
        print(f"[c2f] worker {i} ({s['device']}, GPUs {','.join(s['gpu_ids']) or '-'}): "
              f"{s['builds']} model builds, {s['batches']} batches, {s['jpegs']} frames "
              f"decoded here ({s['jpeg_decoder']}), busy {busy:.0%}, {s['videos']} videos "
              f"decoded into shards here ({s['video_s']:.1f} s)",
              file=sys.stderr)
    return True


def run_stage(fn: Callable, plans: Sequence, args: argparse.Namespace,
              total_videos: int | None, name: str, store: str | os.PathLike,
              input_shard: Callable | None = None, rebuild: str = "") -> int:
    """Run a backbone stage (one task per shard, or the --pool pipeline) with progress; returns
    the exit code of running.run_with_progress (2 also when the cluster can never schedule the
    stage, message printed). Failed shards go to STORE/failures.parquet; a complete run removes
    that table and orphaned temporary files."""
    from cluster.commands.running import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, run_with_progress
    from cluster.resources import ClusterResourceError
    from pipeline.failures import remove_orphan_temps, write_failures

    on_failures = failures_writer(store, plans)
    try:
        if args.pool:
            ok = run_pool_with_progress(fn, plans, args, total_videos, name, on_failures)
            code = EXIT_OK if ok else EXIT_PARTIAL
        else:
            code = run_with_progress(fn, plans, args, total_videos, name, input_shard=input_shard,
                                     rebuild=rebuild, on_failures=on_failures)
    except ClusterResourceError as exc:
        print(f"c2f {name}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if code == EXIT_OK:
        write_failures(store, [])
        remove_orphan_temps(_outputs(plans))
    return code


def _outputs(plans: Sequence) -> list[Path]:
    from featstore import part_path, storage

    out = []
    for plan in plans:
        extract = getattr(plan, "extract", plan)
        if storage.is_remote(extract.store_dir):  # uploads leave no temporary files there
            continue
        out.append(part_path(extract.store_dir, extract.part))
        shard = getattr(plan, "shard", None)
        if shard is not None and hasattr(shard, "path"):
            out.append(Path(shard.path))
    return out
