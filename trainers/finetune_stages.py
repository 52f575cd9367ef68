"""Which backbones a staged method freezes in each stage of an end-to-end run.

On cached features a method's `configure_stage` freezes its own parts; end to end the
backbones in front of those parts must follow, or a stage that should only read a pathway
would still train it. C2F's classroom mode (Quader et al. §3.4, eq. 4; `trainers.c2f.SCHEDULE`)
trains the finest pathway alone first ("teacher": the coarser backbones stay fixed), then
keeps it frozen as the teacher while the coarser pathways learn from it ("classroom": the
fine backbone is frozen too, eval-mode BatchNorm). Methods not listed train every backbone in
every stage (AR-Net's A-1..A-3 fine-tune the backbones throughout; its policy is frozen by
the method itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def c2f_frozen_views(method_config: Any, stage: str) -> tuple[str, ...]:
    """C2F classroom: the coarser views in "teacher", the finest view in "classroom"."""
    views = list(method_config.views)
    if method_config.mode != "classroom":
        return ()
    return tuple(views[:-1]) if stage == "teacher" else (views[-1],)


#: method name -> f(method_config, stage) -> views whose backbones are frozen in that stage
STAGE_FROZEN_VIEWS: dict[str, Callable[[Any, str], tuple[str, ...]]] = {
    "c2f": c2f_frozen_views,
}


def stage_frozen_views(method: str, method_config: Any, stage: str) -> tuple[str, ...]:
    """Backbones `method` freezes in `stage`, on top of the run's `--freeze` views."""
    rule = STAGE_FROZEN_VIEWS.get(method)
    return rule(method_config, stage) if rule else ()
