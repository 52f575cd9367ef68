"""The contract between the shared training loop and each method's model (LiteEval, AR-Net,
SoF-Net, C2F, baselines).

The loop knows nothing about any method: it builds a `Batch` from the feature store, calls
`model(batch, state)` to get a `MethodOutput`, and `model.loss(output, batch, state)` to get a
scalar and named parts for logging. Methods differ only in their module and their loss. What
else the loop needs about a method (its Config, builder, stage schedule, post-training hook,
extra evaluations) is in its `MethodSpec` (trainers/methods.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class Batch:
    """A padded batch of videos.

    features: view name -> [B, T, D] (zeros past each video's length); float16 as the loader
        yields them (as stored), float32 after `to(device)`, which every consumer calls.
    stages: view name -> stage name -> [B, T, D_s] (per-stage pooled features, when the
        method asks for them); same dtypes as features.
    lengths: int64 [B], number of valid frames per video.
    mask: bool [B, T], True on valid frames.
    targets: float32 [B, C] multi-hot labels (single-label datasets have one 1 per row).
    video_ids: the store ids, in batch order.
    """

    features: dict[str, torch.Tensor]
    lengths: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor
    video_ids: list[str]
    stages: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on `device` with float32 features and stages (itself when already so).

        The loader yields features as stored (float16): moving them first and casting on
        `device` sends half the bytes to an accelerator and keeps the cast out of the loader
        (benchmarks/README.md, "Loader").
        """
        device = torch.device(device)
        tensors = [*self.features.values(), *(x for st in self.stages.values()
                                              for x in st.values())]
        if self.targets.device == device and all(x.dtype == torch.float32 for x in tensors):
            return self
        return Batch(
            features={v: _float32_on(x, device) for v, x in self.features.items()},
            lengths=self.lengths.to(device),
            mask=self.mask.to(device),
            targets=self.targets.to(device),
            video_ids=self.video_ids,
            stages={v: {s: _float32_on(x, device) for s, x in st.items()}
                    for v, st in self.stages.items()},
        )


def _float32_on(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` moved to `device`, then (if floating) cast there to float32."""
    x = x.to(device)
    return x.float() if x.is_floating_point() else x


@dataclass
class TrainState:
    """What a method may read about training progress (temperature schedules, stages)."""

    epoch: int = 0
    step: int = 0
    stage: str = "joint"
    training: bool = True


@dataclass
class MethodOutput:
    """What every method returns for a batch.

    logits: [B, C] video-level scores (the prediction used for mAP/top-1).
    gflops: [B] cost of each video: measured per-frame cost of every backbone view and stage the
        policy actually executed, plus the policy's own cost (see trainers.cost).
    frames_used: view name -> [B] number of frames on which that view's backbone ran.
    decisions: [B, T] int64 per-frame decision code (method-defined, -1 past the end), for the
        decision strips in reports; `decision_names` maps code -> label.
    extras: method-specific tensors the loss needs (gate probabilities, inner logits, ...).
    """

    logits: torch.Tensor
    gflops: torch.Tensor
    frames_used: dict[str, torch.Tensor]
    decisions: torch.Tensor
    decision_names: dict[int, str]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(Protocol):
    """A torch module implementing one method (built by its MethodSpec's builder).

    A method whose spec has a stage schedule also defines `configure_stage(stage: str)`.
    """

    #: views the method needs from the store, in coarse → fine order
    required_views: tuple[str, ...]
    #: whether the batch must include per-stage pooled features
    needs_stages: bool

    def __call__(self, batch: Batch, state: TrainState) -> MethodOutput: ...

    def loss(
        self, out: MethodOutput, batch: Batch, state: TrainState
    ) -> tuple[torch.Tensor, dict[str, float]]: ...
