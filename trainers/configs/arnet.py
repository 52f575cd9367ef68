"""Config of AR-Net and its random-policy baseline (trainers/arnet.py).

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
    """AR-Net hyperparameters (defaults: the paper's §4.1 values).

    views: the L resolutions as store views, highest first; the last one feeds the policy.
        Defaults are the synthetic store's ladder (resnet50@224, resnet34@168, resnet18@112,
        mobilenet_v2@84), the paper's backbones.
    skips: the M skip lengths F_i, ascending. Default (1, 2); the paper's (1, 2, 4) are for
        16 frames sampled uniformly over a video (sec. 4.1). Why not 4 here: a skip of F drops
        the next F - 1 frames unseen, so on per-second features of untrimmed videos it jumps
        over class segments shorter than F (a 400-video version of the store of
        tests/test_defaults_measured.py, 3-5 frame segments, 4 seeds: with (1, 2, 4) 5-17
        of 80 test videos never read one class frame and test mAP varied 0.88-0.96; with
        (1, 2) 0.94-0.98).
    hidden: LSTM hidden units of the policy (paper: 512).
    alpha / beta: weights of the GFLOPs and uniform-usage losses (eq. 12; paper 0.1 / 0.3).
    tau0 / tau_decay: Gumbel temperature tau0 * exp(-tau_decay * epoch) (paper 5 / 0.045).
    dropout: dropout on features before the per-view classifiers.
    policy: "learned" (AR-Net) or "random" (the paper's RANDOM baseline: same classifiers,
        actions drawn at random instead of by the policy network).
    random_proportions: for policy="random", the L + M action probabilities (e.g. a learned
        policy's decision proportions, to compare at equal cost); None = uniform.
    """

    views: tuple[str, ...] = ("r50_224", "r34_168", "r18_112", "mbv2_84")
    skips: tuple[int, ...] = (1, 2)
    hidden: int = 512
    alpha: float = 0.1
    beta: float = 0.3
    tau0: float = 5.0
    tau_decay: float = 0.045
    dropout: float = 0.0
    policy: str = "learned"
    random_proportions: tuple[float, ...] | None = None

    def validate(self, info: StoreInfo) -> None:
        """Refuse values the model cannot run with, naming the bad one."""
        views = list(self.views)
        if not views:
            raise ValueError("views must name at least one store view")
        for view in views:
            if view not in info.views:
                raise ValueError(
                    f"views: {view!r} is not a view of the store (views: {sorted(info.views)})"
                )
        if len(set(views)) != len(views):
            raise ValueError(f"views must be distinct, got {views}")
        skips = list(self.skips)
        if any(int(f) != f or f < 1 for f in skips):
            raise ValueError(f"skips must be positive integers, got {skips}")
        if skips != sorted(set(skips)):
            raise ValueError(f"skips must be strictly ascending, got {skips}")
        if self.hidden < 1:
            raise ValueError(f"hidden={self.hidden} must be >= 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be in [0, 1]")
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be >= 0")
        if self.tau0 <= 0:
            raise ValueError(f"tau0={self.tau0} must be > 0")
        if self.tau_decay < 0:
            raise ValueError(f"tau_decay={self.tau_decay} must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.policy not in ("learned", "random"):
            raise ValueError(f"policy={self.policy!r} must be 'learned' or 'random'")
        if self.random_proportions is not None:
            props = list(self.random_proportions)
            if len(props) != len(views) + len(skips):
                raise ValueError(
                    f"random_proportions has {len(props)} values, need L + M = "
                    f"{len(views) + len(skips)}"
                )
            if any(p < 0 for p in props) or sum(props) <= 0:
                raise ValueError(f"random_proportions must be >= 0 with a positive sum: {props}")
