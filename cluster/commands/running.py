"""What every plan-running command shares (`c2f shards`, `extract`, `build`): where it runs
(--mode / --address / --cpus-per-task), running its plans with progress shown, and saying
what helps when some fail (a re-run, or rebuilding a damaged shard)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cluster.executor import DEFAULT_MAX_RETRIES, MODES, RunError, TaskFailure, run_plans
from cluster.progress import Progress, TaskStageTimes
from cluster.resources import ClusterResourceError

EXIT_OK, EXIT_PARTIAL, EXIT_BAD_INPUT = 0, 1, 2


def add_run_args(p: argparse.ArgumentParser) -> None:
    """--mode, --address and --cpus-per-task, with the same meaning in every command."""
    g = p.add_argument_group("where it runs")
    g.add_argument("--mode", choices=MODES, default="local",
                   help="local: embedded Ray on this machine; inprocess: no Ray; cluster: join "
                   "--address or RAY_ADDRESS (use inside `c2f submit`) (%(default)s)")
    g.add_argument("--address", help="Ray address (HOST:PORT or ray://...); implies --mode cluster")
    g.add_argument("--cpus-per-task", type=float, default=1.0,
                   help="CPUs Ray reserves per shard task (%(default)s)")


def run_with_progress(fn: Callable, plans: Sequence, args: argparse.Namespace,
                      total_videos: int | None, name: str,
                      input_shard: Callable[[Any], str] | None = None,
                      rebuild: str = "",
                      on_failures: Callable[[list[TaskFailure]], None] | None = None) -> int:
    """Run every plan where args say, showing progress, and return the exit code: 0 all done;
    when plans failed (the finished outputs are kept), say which and what helps: 2 when a plan
    read a shard (`input_shard(plan)` gives its path) whose tar cannot be read to the end, which
    must be rebuilt (`rebuild` says how) since a re-run would read the same bytes; else 1, and
    a re-run finishes them; 2 also when the cluster can never grant one task's reservation.
    `on_failures` gets the failed plans (e.g. to write a failures
    table); the GPUs reserved per task and the retries of dead workers come from args.num_gpus /
    args.max_retries if set."""
    stage_times = TaskStageTimes()  # filled by results that time their stages (c2f build)
    progress = Progress(len(plans), total_videos=total_videos, unit="shards",
                        stages=stage_times.describe)

    def on_result(result: Any) -> None:
        stage_times.add(result)
        progress.update(result)

    mode = args.mode if args.address is None or args.mode != "local" else "cluster"
    try:
        run_plans(fn, plans, mode=mode, address=args.address, num_cpus=args.cpus_per_task,
                  num_gpus=getattr(args, "num_gpus", 0.0),
                  max_retries=getattr(args, "max_retries", DEFAULT_MAX_RETRIES),
                  on_result=on_result)
    except ClusterResourceError as exc:  # nothing ran: the reservation can never be granted
        progress.close()
        print(f"c2f {name}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunError as exc:
        progress.close()
        if on_failures is not None:
            on_failures(exc.failures)
        print(f"c2f {name}: {exc}", file=sys.stderr)
        damaged = {}
        if input_shard is not None:
            for failure in exc.failures:
                path = input_shard(failure.plan)
                why = shard_damage(path)
                if why is not None:
                    damaged[path] = why
        for path, why in damaged.items():
            print(f"c2f {name}: shard {path} is damaged ({why}); re-running cannot repair it, "
                  f"it must be rebuilt: {rebuild}", file=sys.stderr)
        if len(damaged) < len(exc.failures):
            print(f"c2f {name}: re-run the same command to finish the failed shards (finished "
                  "ones are kept and skipped)", file=sys.stderr)
        return EXIT_BAD_INPUT if damaged else EXIT_PARTIAL
    progress.close()
    return EXIT_OK


def shard_damage(path: str | Path) -> str | None:
    """Why the shard tar at `path` cannot be read to its end (truncated, corrupt, missing), or
    None when every member reads. Reads the whole file: meant for shards that already failed."""
    import tarfile

    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                data = tar.extractfile(member) if member.isfile() else None
                while data is not None and data.read(1 << 20):
                    pass
    except (tarfile.TarError, OSError, EOFError) as exc:
        return str(exc) or type(exc).__name__
    return None
