"""`c2f sweep` on Ray: each knob value trains as one Ray task (GPUs reserved per trial).

The points are independent runs with their own seed and output folder, so running them
concurrently changes nothing in their results; trainers.sweep collects them into the same
sweep.csv and curve as a sequential sweep. A finished point is skipped by `train` itself, so
a re-run after a lost driver or node only trains what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.executor import DEFAULT_MAX_RETRIES, run_plans
from cluster.resources import gpus_for_stage

log = logging.getLogger(__name__)


def train_point(task: tuple[Any, int]) -> Path:
    """One sweep point in a Ray worker: `threads` torch threads (the CPUs it reserved)."""
    import torch

    from trainers.train import train

    config, threads = task
    torch.set_num_threads(threads)
    return train(config)


def ray_points(
    *,
    mode: str = "local",
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Callable[[list], list[Path]]:
    """A `run_points` for trainers.sweep.sweep that trains every config as a Ray task."""
    threads = max(1, int(cpus_per_trial))

    def run(configs: list) -> list[Path]:
        log.info("sweep: %d points as Ray tasks (%g CPUs, %g GPUs each)", len(configs),
                 cpus_per_trial, gpus_per_trial)
        return run_plans(train_point, [(c, threads) for c in configs], mode=mode,
                         address=address, num_cpus=cpus_per_trial, num_gpus=gpus_per_trial,
                         max_retries=max_retries)

    return run


def add_sweep_ray_args(p: Any) -> None:
    """--mode/--address/--cpus-per-trial/--gpus-per-trial of `c2f sweep`."""
    p.add_argument("--mode", choices=("inprocess", "local", "cluster"), default="inprocess",
                   help="inprocess: points one after another here; local: as tasks on an "
                   "embedded Ray; cluster: on --address or RAY_ADDRESS (%(default)s)")
    p.add_argument("--address", help="Ray address; implies --mode cluster")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="(%(default)s)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per point, fractions share a GPU; default 1 with --device cuda, "
                   "else 0")


def points_from_args(args: Any) -> Callable[[list], list[Path]] | None:
    """The run_points the parsed `c2f sweep` flags ask for; None for in-process."""
    mode = "cluster" if args.address and args.mode == "inprocess" else args.mode
    if mode == "inprocess":
        return None
    device = (getattr(args, "device", None) or "cpu").split(":")[0]
    return ray_points(mode=mode, address=args.address, cpus_per_trial=args.cpus_per_trial,
                      gpus_per_trial=gpus_for_stage(device, args.gpus_per_trial))
