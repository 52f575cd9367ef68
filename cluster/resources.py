"""What one Ray task of a stage reserves, and whether the cluster can ever grant it.

Ray schedules by reservations, not by what a task really uses: a task that runs a backbone on
CUDA but reserves no GPU gets `CUDA_VISIBLE_DEVICES` unset, so every such task on an 8-GPU node
lands on `cuda:0`. So stages that run a backbone on CUDA reserve GPUs (fractions allowed: 0.5
puts two workers on one GPU) and CPU-only stages reserve none. A reservation no node can grant
would leave Ray waiting forever without a word, so it is checked against
`ray.cluster_resources()` before anything is submitted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


class ClusterResourceError(RuntimeError):
    """The cluster has fewer CPUs or GPUs in total than one task of the stage reserves."""


@dataclass(frozen=True)
class TaskResources:
    """Per-task reservation; `num_gpus` > 0 makes Ray set CUDA_VISIBLE_DEVICES for the task."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"reservations must be >= 0, got {self}")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError(f"more than one GPU per task must be whole GPUs, got {self.num_gpus}")

    def ray_options(self) -> dict[str, float]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def gpus_for_stage(device: str, gpus_per_worker: float | None) -> float:
    """GPUs one backbone task reserves: `gpus_per_worker` when given, else 1 on cuda, 0 on cpu.

    A reservation with `--device cpu` is allowed on purpose (it reserves a GPU slot without
    touching CUDA: tests with logical GPUs, or keeping a CPU fallback off busy GPU nodes); a
    CUDA stage that reserves nothing is refused, since it would run on unassigned GPUs.
    """
    if gpus_per_worker is None:
        return 1.0 if device == "cuda" else 0.0
    if gpus_per_worker < 0:
        raise ValueError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if device == "cuda" and gpus_per_worker == 0:
        raise ValueError(
            "--device cuda needs --gpus-per-worker > 0: a task that reserves no GPU gets no "
            "CUDA_VISIBLE_DEVICES from Ray, so all such tasks would share GPU 0"
        )
    return float(gpus_per_worker)


def check_fits(
    total: Mapping[str, float], available: Mapping[str, float], need: TaskResources
) -> None:
    """Raise ClusterResourceError if no task could ever start; log when none can start now."""
    for key, amount in (("CPU", need.num_cpus), ("GPU", need.num_gpus)):
        have = float(total.get(key, 0.0))
        if amount > 0 and have < amount - 1e-9:
            hint = (
                " (start GPU worker nodes, or run the backbones with --device cpu "
                "--gpus-per-worker 0)"
                if key == "GPU"
                else ""
            )
            raise ClusterResourceError(
                f"each task reserves {amount:g} {key}, but the Ray cluster has {have:g} {key} "
                f"in total, so nothing would ever be scheduled{hint}"
            )
        if amount > 0 and float(available.get(key, 0.0)) < amount - 1e-9:
            log.warning(
                "each task reserves %g %s and only %g are free now (other jobs hold the rest): "
                "tasks wait until they are released",
                amount,
                key,
                float(available.get(key, 0.0)),
            )


def concurrent_slots(total: Mapping[str, float], need: TaskResources) -> int:
    """How many tasks of `need` the cluster can run at once (at least 1)."""
    counts = [
        float(total.get(key, 0.0)) / amount
        for key, amount in (("CPU", need.num_cpus), ("GPU", need.num_gpus))
        if amount > 0
    ]
    return max(1, int(min(counts) + 1e-9)) if counts else max(1, int(total.get("CPU", 1)))
