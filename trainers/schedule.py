"""Learning-rate schedule, optimizer and gradient clipping of the shared training loop.

Why: a fixed learning rate either learns slowly (the first epochs at chance) or ends noisy; the
papers all decay it (LiteEval's official code: MultiStepLR at epochs 40 and 80 and gradient
norm clipping at 5; C2F sec. 4: x0.1 after epochs 20, 40, 45 of 50; SoF-Net sec. 4.1: x0.1 after
30 of 75; AR-Net sec. 4.1: a lower rate for its last stage). Here the rate is a pure function
of the global step, so a resumed run continues on the same curve without saving any state:

- "cosine": linear warm-up over `warmup_epochs`, then half a cosine down to 0 at the end;
- "multistep": linear warm-up, then x`gamma` at each fraction of the run in `milestones`;
- "constant": the base rate throughout (the old behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

SCHEDULES = ("cosine", "multistep", "constant")
OPTIMIZERS = ("adam", "adamw", "sgd")


def lr_factor(
    kind: str,
    step: int,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0.0,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at global step `step` (0-based)."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule {kind!r} must be one of {SCHEDULES}")
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total, round(warmup_epochs * steps_per_epoch))
    if kind == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / warmup
    if kind == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    passed = sum(1 for m in milestones if step >= m * total)
    return gamma**passed


def make_optimizer(
    kind: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Adam (LiteEval sec. 4.1), AdamW, or SGD with momentum 0.9 (AR-Net, C2F, SoF-Net)."""
    params = [p for p in params]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer {kind!r} must be one of {OPTIMIZERS}")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group learning rate `lr`."""
    for group in opt.param_groups:
        group["lr"] = lr


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Scale gradients down to total L2 norm `max_norm` (0 = no clipping); the norm before."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad) for p in grads])))
