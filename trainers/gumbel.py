"""Straight-through Gumbel-softmax sampling for discrete per-frame decisions.

AR-Net (eq. 5-8), SoF-Net (eq. 3.4) and LiteEval all make hard, discrete choices per frame
(resolution, skip, stop-or-forward, coarse-or-fine) and still train the policy with ordinary
backpropagation: the forward pass uses the one-hot sample (Gumbel-max, eq. 6-7) so the cost
that is counted is the cost really paid, and the backward pass uses the gradient of the
relaxed softmax sample (eq. 8).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_gumbel(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise G = -log(-log U), U ~ Unif(0, 1) (AR-Net eq. 6)."""
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    tiny = torch.finfo(like.dtype).tiny
    neg_log_u = -torch.log(u.clamp_min(tiny))
    return -torch.log(neg_log_u.clamp_min(tiny))


def gumbel_softmax_st(logits: torch.Tensor, tau: float, hard: bool = True) -> torch.Tensor:
    """Sample from the Gumbel-softmax distribution over the last dimension.

    logits are unnormalised scores z (log p up to a constant, which changes neither the
    arg-max of eq. 6 nor the softmax of eq. 8). With hard=True the result is the one-hot
    vector of eq. 7 in the forward pass while its gradient is that of the relaxed sample
    P of eq. 8 (the straight-through estimator); with hard=False the relaxed sample itself.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    log_p = F.log_softmax(logits, dim=-1)
    soft = F.softmax((log_p + sample_gumbel(logits.shape, logits)) / tau, dim=-1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return one_hot - soft.detach() + soft


def hard_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Deterministic one-hot of the most likely action: the decision rule at inference."""
    return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)


def annealed_tau(tau0: float, decay: float, epoch: int) -> float:
    """Temperature tau0 * exp(-decay * epoch) (AR-Net §4.1 and SoF-Net §4.2: tau0=5, 0.045)."""
    return tau0 * math.exp(-decay * epoch)
