"""Give randomly initialised backbones usable BatchNorm statistics.

A freshly initialised network in eval mode normalises with running mean 0 / variance 1, which
does not match its real activations: measured on a 224-px noise batch, ResNet-101 features
reach 1e5 (beyond float16, so the feature store cannot hold them) while MobileNetV2 and
EfficientNet-B0 shrink to 1e-8 and 1e-14 (below float16, stored as zeros). Re-estimating every
BatchNorm's statistics once, on a seeded noise batch, keeps activations near unit scale. The
batch is fixed, so every process (every Ray worker) builds the identical model; trained weights
are never touched by this.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module, clip: bool = False, size: int = 64, batch: int = 8, seed: int = 0
) -> nn.Module:
    """Recompute the running statistics of every BatchNorm layer from one noise batch.

    `clip` builds a [N, 3, 8, H, W] batch for 3D backbones instead of [N, 3, H, W].
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or any(p.is_meta for p in model.parameters()):
        return model  # nothing to calibrate, or a shape-only model built on the meta device
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, 8, size, size) if clip else (batch, 3, size, size)
    noise = torch.randn(shape, generator=generator)
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    model(noise)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return model
