"""How many torch threads a trainer uses: what the user asked, else the CPUs it may use.

torch defaults to the machine's core count, which on a shared or containerised machine is
more than the process may use: on a 2-core machine shared with other jobs, LiteEval's step
took 11.5 s with torch's default and 0.56 s with 1 thread (issue 10). An explicit choice
(`--threads`, config key `threads`, else OMP_NUM_THREADS) wins. Otherwise: the fewest of the
process's CPU affinity, the container's CPU quota (cgroup v2 cpu.max or v1 cpu.cfs_quota_us /
cpu.cfs_period_us, rounded up), and, inside a Ray task or actor, the CPUs Ray reserved for it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """CPUs allowed by the cgroup's quota (rounded up), or None without a quota."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            return max(1, math.ceil(quota_us / period_us))
        return None
    return None


def ray_reserved_cpus() -> int | None:
    """CPUs Ray reserved for the current task or actor (rounded up); None outside one."""
    ray = sys.modules.get("ray")  # a Ray worker has imported ray already; never import it here
    if ray is None or not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    if ctx.get_task_id() is None and ctx.get_actor_id() is None:
        return None  # the driver: nothing reserved for it
    cpus = ctx.get_assigned_resources().get("CPU")
    return max(1, math.ceil(cpus)) if cpus else None


def available_cpus() -> int:
    """The CPUs this process may use: affinity, cgroup quota and Ray's reservation, fewest."""
    counts = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else (os.cpu_count() or 1)]
    counts += [n for n in (cgroup_cpu_quota(), ray_reserved_cpus()) if n is not None]
    return max(1, min(counts))


def default_threads() -> tuple[int, str]:
    """Threads to use when none are asked for, and where the number comes from.

    OMP_NUM_THREADS, when set to a positive integer, is an explicit choice (Ray sets it to the
    CPUs it reserved for a task); otherwise `available_cpus()`.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    return available_cpus(), "CPUs this process may use"


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to `threads` (None: `default_threads()`); returns it."""
    import torch

    n, source = (threads, "--threads") if threads is not None else default_threads()
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    log.info("torch threads: %d (%s)", n, source)
    return n
