"""Run a plain function over a list of plans: in this process, on an embedded Ray, or on a cluster.

The unit of work (`write_shard`, `extract_shard`, ...) is a plain function from a picklable plan
to a finished output; it knows nothing of Ray. This module only schedules it, so a test, a laptop
run and a cluster run execute the same code:

* `inprocess`: call fn(plan) one after another (debugging, tests, tiny inputs);
* `local`: start an embedded Ray on this machine (`ray.init(address="local")`, never joining a
  cluster someone else started) unless Ray is already initialised, and shut it down afterwards
  only if this call started it;
* `cluster`: join an existing cluster at `address` (`ray://…` or `HOST:PORT`); with no address,
  Ray's own lookup applies (RAY_ADDRESS, as set inside `c2f submit` jobs, or the cluster started
  with `ray start` on this machine).

Each task reserves `num_cpus` and `num_gpus` (cluster/resources.py: a stage that runs a backbone
on CUDA reserves GPUs, so Ray gives it its own CUDA_VISIBLE_DEVICES); a reservation the cluster
can never grant is refused before anything is submitted. At most ~2 tasks per slot are in
flight, so a million plans do not become a million pending objects.

Two kinds of failure, treated differently. A plan that raises is a property of its input:
it is not retried. A worker process that dies (segfault, OOM kill, its node lost) is retried by
Ray up to `max_retries` times, then given up. Either way the other plans go on, finished outputs
stay, and then RunError names each failed plan (its position and `index`) with its error, how
many attempts it had, and carries the results of the rest.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.resources import TaskResources, check_fits, concurrent_slots
from pipeline.devices import hide_gpus

log = logging.getLogger(__name__)

MODES = ("local", "inprocess", "cluster")
IN_FLIGHT_PER_SLOT = 2
DEFAULT_MAX_RETRIES = 3


@dataclass
class TaskFailure:
    """One plan that raised: where it sits in the plan list, the plan, and the error text."""

    position: int
    plan: Any
    error: str
    attempts: int = 1
    worker_died: bool = False

    @property
    def reason(self) -> str:
        """The last line of the error: what a failures table records."""
        lines = self.error.strip().splitlines()
        return lines[-1] if lines else "?"

    def describe(self) -> str:
        index = getattr(self.plan, "index", None)
        which = f"plan {self.position}" + (f" (index {index})" if index is not None else "")
        tries = f" (worker died; gave up after {self.attempts} attempts)" if self.worker_died else ""
        return f"{which}: {self.reason}{tries}"


class RunError(RuntimeError):
    """Some plans failed. `failures` lists them; `results` holds every plan's result in plan
    order, None where the plan failed."""

    def __init__(self, failures: list[TaskFailure], results: list[Any]) -> None:
        self.failures = failures
        self.results = results
        lines = "\n  ".join(f.describe() for f in failures)
        super().__init__(f"{len(failures)} of {len(results)} plans failed:\n  {lines}")


def run_plans(
    fn: Callable[[Any], Any],
    plans: Sequence[Any],
    *,
    mode: str = "local",
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
    on_result: Callable[[Any], None] | None = None,
) -> list[Any]:
    """Apply fn to every plan and return the results in plan order.

    `on_result(result)` is called in this process as each plan finishes (any order), e.g. a
    cluster.progress.Progress. `num_cpus` / `num_gpus` are what Ray reserves per task;
    `max_retries` bounds the re-runs of a task whose worker died. Raises RunError after all
    plans ran if any failed, ClusterResourceError before any ran if no task could be scheduled.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    plans = list(plans)
    if not plans:
        return []
    if mode == "inprocess":
        return _run_inprocess(fn, plans, on_result)
    need = TaskResources(num_cpus=num_cpus, num_gpus=num_gpus)
    return _run_ray(fn, plans, mode, address, need, max_retries, on_result)


def _run_inprocess(
    fn: Callable[[Any], Any], plans: list[Any], on_result: Callable[[Any], None] | None
) -> list[Any]:
    results: list[Any] = [None] * len(plans)
    failures = []
    for i, plan in enumerate(plans):
        try:
            results[i] = fn(plan)
        except Exception:  # one bad plan must not lose the others; reported below
            log.exception("plan %d failed", i)
            failures.append(TaskFailure(i, plan, traceback.format_exc()))
            continue
        if on_result is not None:
            on_result(results[i])
    if failures:
        raise RunError(failures, results)
    return results


def _apply(fn: Callable[[Any], Any], plan: Any, no_gpus: bool = False) -> Any:
    """The Ray task body: fn may be any picklable callable (builtins and partials included).

    `no_gpus`: the task reserved none, so it must see none (`pipeline.devices.hide_gpus`)."""
    if no_gpus:
        hide_gpus()
    return fn(plan)


def connect(mode: str, address: str | None) -> bool:
    """Initialise Ray for `mode` unless it already is; return whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if mode == "local":
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address=address or "auto")  # "auto": RAY_ADDRESS, else the `ray start` cluster
    resources = ray.cluster_resources()
    log.info("Ray %s: %s CPUs, %s GPUs", mode, resources.get("CPU", 0), resources.get("GPU", 0))
    return True


def _run_ray(
    fn: Callable[[Any], Any],
    plans: list[Any],
    mode: str,
    address: str | None,
    need: TaskResources,
    max_retries: int,
    on_result: Callable[[Any], None] | None,
) -> list[Any]:
    import ray

    started = connect(mode, address)
    results: list[Any] = [None] * len(plans)
    failures: list[TaskFailure] = []
    pending: dict[Any, int] = {}
    try:
        total = ray.cluster_resources()
        check_fits(total, ray.available_resources(), need)
        # retry_exceptions=False: an exception is the plan's own fault and would recur; only a
        # dead worker (crash, OOM kill, lost node) is worth another attempt. Ray's default
        # max_calls=1 for GPU tasks stays: a reused worker may be handed another GPU while its
        # CUDA context is bound to the first one; models built once per worker need the actor
        # pool (cluster/gpu_pool.py), whose actors keep their GPU for life.
        remote = ray.remote(
            **need.ray_options(), max_retries=max_retries, retry_exceptions=False
        )(_apply)
        fn_ref = ray.put(fn)
        limit = IN_FLIGHT_PER_SLOT * concurrent_slots(total, need)
        next_plan = 0
        while next_plan < len(plans) or pending:
            while next_plan < len(plans) and len(pending) < limit:
                pending[remote.remote(fn_ref, plans[next_plan], need.num_gpus == 0)] = next_plan
                next_plan += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    died = not isinstance(exc, ray.exceptions.RayTaskError)
                    attempts = max_retries + 1 if died else 1
                    failures.append(TaskFailure(i, plans[i], str(exc), attempts, died))
                    log.error("plan %d failed after %d attempt(s): %s", i, attempts, exc)
                    continue
                if on_result is not None:
                    on_result(results[i])
    finally:
        for ref in pending:
            ray.cancel(ref)
        if started:
            ray.shutdown()
    if failures:
        raise RunError(failures, results)
    return results
