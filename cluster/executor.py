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

At most ~2 tasks per CPU slot are in flight, so a million plans do not become a million pending
objects. A failing plan does not stop the others: every plan runs, finished outputs stay, and
then RunError names each failed plan (its position and `index`) with its error and carries the
results of the rest.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MODES = ("local", "inprocess", "cluster")
IN_FLIGHT_PER_SLOT = 2


@dataclass
class TaskFailure:
    """One plan that raised: where it sits in the plan list, the plan, and the error text."""

    position: int
    plan: Any
    error: str

    def describe(self) -> str:
        index = getattr(self.plan, "index", None)
        which = f"plan {self.position}" + (f" (index {index})" if index is not None else "")
        return f"{which}: {self.error.strip().splitlines()[-1] if self.error.strip() else '?'}"


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
    on_result: Callable[[Any], None] | None = None,
) -> list[Any]:
    """Apply fn to every plan and return the results in plan order.

    `on_result(result)` is called in this process as each plan finishes (any order), e.g. a
    cluster.progress.Progress. `num_cpus` is what Ray reserves per task. Raises RunError after
    all plans ran if any failed.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    plans = list(plans)
    if not plans:
        return []
    if mode == "inprocess":
        return _run_inprocess(fn, plans, on_result)
    return _run_ray(fn, plans, mode, address, num_cpus, on_result)


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


def _apply(fn: Callable[[Any], Any], plan: Any) -> Any:
    """The Ray task body: fn may be any picklable callable (builtins and partials included)."""
    return fn(plan)


def _connect(mode: str, address: str | None) -> bool:
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
    num_cpus: float,
    on_result: Callable[[Any], None] | None,
) -> list[Any]:
    import ray

    started = _connect(mode, address)
    results: list[Any] = [None] * len(plans)
    failures: list[TaskFailure] = []
    pending: dict[Any, int] = {}
    try:
        remote = ray.remote(num_cpus=num_cpus)(_apply)
        fn_ref = ray.put(fn)
        slots = max(1, int(ray.cluster_resources().get("CPU", 1) // max(num_cpus, 1e-3)))
        limit = IN_FLIGHT_PER_SLOT * slots
        next_plan = 0
        while next_plan < len(plans) or pending:
            while next_plan < len(plans) and len(pending) < limit:
                pending[remote.remote(fn_ref, plans[next_plan])] = next_plan
                next_plan += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    failures.append(TaskFailure(i, plans[i], str(exc)))
                    log.error("plan %d failed: %s", i, exc)
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
