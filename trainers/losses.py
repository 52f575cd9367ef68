"""Classification losses shared by the methods, multi-label aware.

FCVID and ActivityNet videos may carry several labels; the papers' cross-entropy (LiteEval
eq. 7, AR-Net eq. 9, SoF-Net eq. 3.9) is taken against y/|y|, which is exactly their plain CE
for the single-label (one-hot) case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against y/|y| over the last dim; returns one loss per leading index."""
    weights = targets / targets.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return -(weights * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def video_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-video classification loss [B]: soft-target CE ("ce") or BCE over classes ("bce")."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)
    return soft_cross_entropy(logits, targets)
