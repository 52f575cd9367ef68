"""AR-Net end to end: stage A-1 trains one base model per resolution, as the paper does.

Meng et al. (ECCV 2020, §3.3 and the public `scripts_train.sh`) train AR-Net in three steps:
A-1 fine-tunes each resolution's base model Psi_l (backbone + classifier) on its own, on every
frame, as a plain TSN model; A-2 trains the policy jointly with them (Gumbel-softmax, the
FLOPs loss); A-3 freezes the policy and fine-tunes the base models on its choices. On cached
features `trainers.arnet` warms up with a random resolution per frame instead, which only
trains the classifiers; end to end that would give each backbone 1/L of the frames before the
policy starts to rely on it. `BaseModelsFirst` keeps the method and its stages and replaces
only the loss of the first stage ("warmup") by A-1's: the mean over resolutions of the
cross-entropy of each base model's video prediction (mean of its frame logits, eq. 4 on every
frame). The encoder already runs every resolution on every frame, so A-1 costs no extra
compute. The stages that follow are the method's own (A-2 "joint", A-3 "finetune").
"""

from __future__ import annotations

import torch

from trainers.encoder import EndToEnd
from trainers.losses import soft_cross_entropy
from trainers.method import Batch, MethodOutput, TrainState

#: the stage of `trainers.arnet.SCHEDULE` that A-1 replaces
A1_STAGE = "warmup"


class BaseModelsFirst(EndToEnd):
    """AR-Net (learned or random policy) whose warm-up stage is A-1 (see the module doc)."""

    def loss(self, out: MethodOutput, batch: Batch,
             state: TrainState) -> tuple[torch.Tensor, dict[str, float]]:
        if state.stage != A1_STAGE:
            return super().loss(out, batch, state)
        method = self.method
        losses = {}
        for head, view in zip(method.heads, method.views):
            frame_logits = head(method.drop(batch.features[view]))  # [B, T, C]
            m = batch.mask.unsqueeze(2).to(frame_logits.dtype)
            video = (frame_logits * m).sum(1) / m.sum(1).clamp_min(1.0)
            losses[view] = soft_cross_entropy(video, batch.targets).mean()
        total = torch.stack(list(losses.values())).mean()
        return total, {f"A1_{v}": lo.item() for v, lo in losses.items()}
