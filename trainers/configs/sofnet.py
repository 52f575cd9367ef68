"""Config of SoF-Net (trainers/sofnet.py).

Torch-free, so that `c2f train METHOD --help` can list its keys without importing the
model; each key is documented once, in the docstring (trainers/config_help.py reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainers.data import StoreInfo


@dataclass
class Config:
    """SoF-Net hyperparameters (defaults: the thesis' §4.2 values, tiny stores use smaller sizes).

    view: the store view whose per-stage features the policy modules read.
    stages: the stages with a policy module, in network order; None = every stored stage.
    hidden: LSTM hidden units of each policy module (paper 512).
    embed: size of W_x x, the policy module's input embedding.
    mlp_hidden: hidden units of the two-layer MLP classifier (eq. 3.5).
    alpha / beta: loss weights of eq. 3.8 and eq. 3.12 (paper 0.9 / 0.9).
    tau0 / tau_decay: Gumbel temperature tau0 * exp(-tau_decay * epoch) (paper 5 / 0.045).
    forward_bias: initial gate logit of "forward" minus "stop". With N modules and unbiased
        gates a frame starts with a 1 / 2^N chance to be used, and the joint stage collapses
        to stopping everything; a bias of 2 (P(forward) = 0.88 per module) starts it near the
        warm-up's all-forward policy. Not in the thesis, which does not say how gates start.
    early_termination / rho / t_min: eq. 3.7 at inference (paper rho=0.999, T_min=3): the
        video ends once its prediction is surer than rho after more than t_min fully processed
        frames. The thesis' T-bar counts processed frames; counting every frame lets one
        forwarded frame end a video (measured: mAP 0.77 instead of 0.93 at rho 0.9).
    layer_skipping: False forwards every frame through every stage at inference (the policy
        modules still run and are counted): the "all stages" reference of Table 4.4, row 1.
    """

    view: str = "fine"
    stages: tuple[str, ...] | None = None
    hidden: int = 512
    embed: int = 512
    mlp_hidden: int = 512
    alpha: float = 0.9
    beta: float = 0.9
    tau0: float = 5.0
    tau_decay: float = 0.045
    forward_bias: float = 2.0
    early_termination: bool = True
    rho: float = 0.999
    t_min: int = 3
    layer_skipping: bool = True

    def validate(self, info: StoreInfo) -> None:
        """Refuse values the model cannot run with, naming the bad one."""
        if self.view not in info.views:
            raise ValueError(
                f"view={self.view!r} is not a view of the store (views: {sorted(info.views)})"
            )
        stored = info.views[self.view].stage_dims
        if not stored:
            raise ValueError(f"view={self.view!r} has no per-stage features in the store")
        if self.stages is not None:
            if not list(self.stages):
                raise ValueError("stages must name at least one stage (or be None for all)")
            for s in self.stages:
                if s not in stored:
                    raise ValueError(
                        f"stages: {s!r} is not a stored stage of {self.view!r} ({list(stored)})"
                    )
            if len(set(self.stages)) != len(list(self.stages)):
                raise ValueError(f"stages must be distinct, got {list(self.stages)}")
        for key in ("hidden", "embed", "mlp_hidden"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")
        for key in ("alpha", "beta"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key}={getattr(self, key)} must be in [0, 1]")
        if self.tau0 <= 0:
            raise ValueError(f"tau0={self.tau0} must be > 0")
        if self.tau_decay < 0:
            raise ValueError(f"tau_decay={self.tau_decay} must be >= 0")
        if not 0.0 < self.rho <= 1.0:
            raise ValueError(f"rho={self.rho} must be in (0, 1]")
        if self.t_min < 0:
            raise ValueError(f"t_min={self.t_min} must be >= 0")
