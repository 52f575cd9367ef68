"""Cost accounting shared by every method, so all of them count GFLOPs the same way.

A video's cost = measured per-frame cost of every backbone view (or backbone stage) the policy
actually ran, summed over the frames it ran on, + the policy's own cost (RNN cells, gates,
heads) counted per step with the counter the backbones use (`backbones.flops.count_gmacs`:
FlopCounterMode with fused RNN kernels off, 2 FLOPs per multiply-add, halved to GMACs; the
papers call GMACs "GFLOPs").
"""

from __future__ import annotations

import torch

from backbones.flops import count_gmacs
from trainers.data import StoreInfo, ViewInfo


def module_gmacs(module: torch.nn.Module, *example_inputs) -> float:
    """GMACs of one call `module(*example_inputs)` (backbones.flops.count_gmacs).

    Pass inputs with batch size 1 to get the cost of one step for one video. Like the backbone
    counts, only matrix products and convolutions are counted (elementwise activations are not).
    """
    return count_gmacs(module, *example_inputs)[0]


def frames_cost(frames_used: dict[str, torch.Tensor], info: StoreInfo) -> torch.Tensor:
    """[B] GMACs of running each view's backbone on `frames_used[view]` [B] frames."""
    total = None
    for view, frames in frames_used.items():
        if view not in info.views:
            raise ValueError(f"unknown view {view!r} in frames_used")
        part = frames.to(torch.float64) * info.views[view].gmacs_per_frame
        total = part if total is None else total + part
    if total is None:
        raise ValueError("frames_used is empty")
    return total


def stages_cost(exits: dict[str, torch.Tensor], view: ViewInfo) -> torch.Tensor:
    """[B] GMACs when `exits[stage]` [B] frames ran the backbone up to `stage` and stopped.

    Uses the cumulative per-stage cost (SoF-Net eq. 3.10 lookup): a frame that stops after
    res3 paid for res1..res3.
    """
    total = None
    for stage, frames in exits.items():
        if stage not in view.stage_gmacs:
            raise ValueError(f"view {view.name!r} has no stage {stage!r}")
        part = frames.to(torch.float64) * view.stage_gmacs[stage]
        total = part if total is None else total + part
    if total is None:
        raise ValueError("exits is empty")
    return total


def policy_cost(gmacs_per_step: float, steps: torch.Tensor) -> torch.Tensor:
    """[B] GMACs of a policy that costs `gmacs_per_step` and ran `steps` [B] times."""
    return steps.to(torch.float64) * gmacs_per_step
