"""Optimiser and learning-rate schedule of an end-to-end run, with per-part learning rates.

Three parts, as in AR-Net's and AdaFocus' public code: pretrained backbones learn slowly
(lr x backbone_lr_mult), new classifier heads fast (lr x head_lr_mult), and everything else
of the method (policies, gates, RNNs) at the base rate. A method parameter is a head
parameter when a module on its path is named `head`, `heads` or `classifier` (the names the
methods in trainers/ use for their classifiers). Frozen parameters are in no group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

HEAD_NAMES = frozenset({"head", "heads", "classifier"})


def is_head(name: str) -> bool:
    """True for a parameter name with a `head`/`heads`/`classifier` module on its path."""
    return any(part in HEAD_NAMES for part in name.split(".")[:-1])


def param_groups(encoder: nn.Module, method: nn.Module, lr: float, backbone_mult: float,
                 head_mult: float) -> list[dict]:
    """Optimizer groups 'backbone', 'heads', 'policy' (empty ones left out): the encoder's
    trainable backbones and every method parameter (a staged method such as AR-Net freezes
    and unfreezes its policy per stage; a frozen parameter has no gradient and is skipped)."""
    backbone = [p for p in encoder.parameters() if p.requires_grad]
    heads = [p for n, p in method.named_parameters() if is_head(n)]
    policy = [p for n, p in method.named_parameters() if not is_head(n)]
    groups = [("backbone", backbone, lr * backbone_mult), ("heads", heads, lr * head_mult),
              ("policy", policy, lr)]
    return [{"name": n, "params": ps, "lr": rate} for n, ps, rate in groups if ps]


def make_optimizer(groups: list[dict], kind: str, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """SGD with (non-Nesterov) momentum, or AdamW, over the groups."""
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum,
                               weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
    raise ValueError(f"optimizer must be sgd or adamw, got {kind!r}")


def lr_factor(step: int, steps_per_epoch: int, epochs: int, warmup_epochs: float,
              schedule: str, milestones: Sequence[int] = ()) -> float:
    """Multiplier of every group's learning rate at `step` (0-based).

    Linear warm-up from 1/warmup to 1 over `warmup_epochs`, then cosine decay to 0 at the end
    of training, or x0.1 at each milestone epoch (multistep, as C2F §4: x0.1 at 20/40/45).
    """
    total = steps_per_epoch * epochs
    warm = round(warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if schedule == "cosine":
        span = max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))
    if schedule == "multistep":
        epoch = step // steps_per_epoch
        return 0.1 ** sum(1 for m in milestones if epoch >= m)
    raise ValueError(f"schedule must be cosine or multistep, got {schedule!r}")
