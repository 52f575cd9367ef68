"""What every plan-running command shares (`c2f shards`, `extract`, `build`): where it runs
(--mode / --address / --cpus-per-task) and running its plans with progress shown."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cluster.executor import DEFAULT_MAX_RETRIES, MODES, RunError, TaskFailure, run_plans
from cluster.progress import Progress


def add_run_args(p: argparse.ArgumentParser) -> None:
    """--mode, --address and --cpus-per-task, with the same meaning in every command."""
    p.add_argument("--mode", choices=MODES, default="local",
                   help="local: embedded Ray on this machine; inprocess: no Ray; cluster: join "
                   "--address or RAY_ADDRESS (use inside `c2f submit`) (%(default)s)")
    p.add_argument("--address", help="Ray address (HOST:PORT or ray://...); implies --mode cluster")
    p.add_argument("--cpus-per-task", type=float, default=1.0,
                   help="CPUs Ray reserves per shard task (%(default)s)")


def run_with_progress(fn: Callable, plans: Sequence, args: argparse.Namespace,
                      total_videos: int | None, name: str,
                      on_failures: Callable[[list[TaskFailure]], None] | None = None) -> bool:
    """Run every plan where args say, showing progress; False (after saying which plans failed
    and that a re-run finishes them) if any plan failed — the finished outputs are kept.
    `on_failures` gets the failed plans (e.g. to write a failures table); the GPUs reserved per
    task and the retries of dead workers come from args.num_gpus / args.max_retries if set."""
    progress = Progress(len(plans), total_videos=total_videos, unit="shards")
    mode = args.mode if args.address is None or args.mode != "local" else "cluster"
    try:
        run_plans(fn, plans, mode=mode, address=args.address, num_cpus=args.cpus_per_task,
                  num_gpus=getattr(args, "num_gpus", 0.0),
                  max_retries=getattr(args, "max_retries", DEFAULT_MAX_RETRIES),
                  on_result=progress.update)
    except RunError as exc:
        progress.close()
        if on_failures is not None:
            on_failures(exc.failures)
        print(f"c2f {name}: {exc}\nre-run the same command to finish the failed shards "
              "(finished ones are kept and skipped)", file=sys.stderr)
        return False
    progress.close()
    return True
