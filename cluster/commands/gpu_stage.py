"""Flags and outcomes shared by the stages that run backbones (`c2f extract`, `c2f build`):
GPUs reserved per task, bounded retries of dead workers, and the failures table."""

from __future__ import annotations

import argparse
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


def resolve_stage_resources(args: argparse.Namespace) -> None:
    """Set args.num_gpus from --device/--gpus-per-worker; in-process runs check CUDA here,
    since this process is the worker. Raises ValueError/RuntimeError for bad settings."""
    from cluster.resources import gpus_for_stage

    args.num_gpus = gpus_for_stage(args.device, args.gpus_per_worker)
    if args.max_retries < 0:
        raise ValueError(f"--max-retries must be >= 0, got {args.max_retries}")
    if args.mode == "inprocess" and args.address is None:
        from pipeline.devices import worker_device

        worker_device(args.device)


def failures_writer(store: Path, plans: Sequence) -> Callable[[list], None]:
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


def run_stage(run: Callable[..., bool], store: Path, plans: Sequence, *args) -> bool | None:
    """Call run_with_progress-like `run(*args, on_failures=...)`; None if the cluster can never
    schedule a task (message printed). A complete run removes the previous failures table."""
    from cluster.resources import ClusterResourceError
    from pipeline.failures import remove_orphan_temps, write_failures

    try:
        ok = run(*args, on_failures=failures_writer(store, plans))
    except ClusterResourceError as exc:
        print(f"c2f: {exc}", file=sys.stderr)
        return None
    if ok:
        write_failures(store, [])
        remove_orphan_temps(_outputs(plans))
    return ok


def _outputs(plans: Sequence) -> list[Path]:
    from featstore import part_path

    out = []
    for plan in plans:
        extract = getattr(plan, "extract", plan)
        out.append(part_path(extract.store_dir, extract.part))
        shard = getattr(plan, "shard", None)
        if shard is not None and hasattr(shard, "path"):
            out.append(Path(shard.path))
    return out
