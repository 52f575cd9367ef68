"""Config of C2F (trainers/c2f.py).

Torch-free, so that `c2f train METHOD --help` can list its keys without importing the
model; each key is documented once, in the docstring (trainers/config_help.py reads it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from trainers.data import StoreInfo

#: frame-score pooling of a pathway (see Config.pool)
POOLS = ("lse", "mean", "topk")


@dataclass
class Config:
    """C2F hyperparameters (paper defaults: beta=1, alpha=0.9 joint, alpha=0.1/tau=6 classroom).

    views: pathway views, coarse first, finest last (N = len(views) >= 2).
    mode: "joint" (eq. 3) or "classroom" (eq. 4 with a frozen, first-trained finest pathway).
    beta: reparameterization strength of the fusion FC layer, in [0, 2] (eq. 1).
    alpha: alpha of eq. 3, weight of the pathway losses (joint mode).
    distill_alpha: alpha of eq. 4, weight of the distillation term (classroom mode).
    tau: distillation temperature of eq. 4.
    head_hidden: hidden width of the per-frame head (0: a linear head).
    dropout: dropout before each pathway's final FC (the paper uses 0.5).
    exit_threshold: T used by the offline evaluation; None runs the whole ensemble (C2F_En).
    loss: "ce" (soft-target CE, see trainers.liteeval) or "bce".
    pool: how a pathway turns its frame scores into O_n: "lse" (default) log-mean-exp of the
        frame logits, so the frames that score a class highest carry its video score; "mean"
        (TSM's average, the paper's pathways) lets the background frames of an untrimmed
        video outvote its short class segment; "topk" the mean of the `topk` best frames per
        class.
    topk: fraction of a video's frames "topk" pooling averages (at least one frame).
    """

    #: what a run whose config.json predates a key trained with (trainers.config reads it)
    LEGACY_VALUES: ClassVar[dict[str, str]] = {"pool": "mean"}

    views: list[str] = field(default_factory=lambda: ["coarse", "fine"])
    mode: str = "joint"
    beta: float = 1.0
    alpha: float = 0.9
    distill_alpha: float = 0.1
    tau: float = 6.0
    head_hidden: int = 64
    dropout: float = 0.5
    exit_threshold: float | None = None
    loss: str = "ce"
    pool: str = "lse"
    topk: float = 0.1

    def validate(self, info: StoreInfo) -> None:
        """Refuse values the model cannot run with, naming the bad one."""
        if len(self.views) < 2:
            raise ValueError(f"views={self.views} needs at least two pathways (coarse, fine)")
        for view in self.views:
            if view not in info.views:
                raise ValueError(
                    f"views: {view!r} is not a view of the store (views: {sorted(info.views)})"
                )
        if len(set(self.views)) != len(self.views):
            raise ValueError(f"views={self.views} repeats a view")
        if self.mode not in ("joint", "classroom"):
            raise ValueError(f"mode={self.mode!r} must be 'joint' or 'classroom'")
        if not 0.0 <= self.beta <= 2.0:
            raise ValueError(f"beta={self.beta} must be in [0, 2]")
        for key in ("alpha", "distill_alpha"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key}={getattr(self, key)} must be in [0, 1]")
        if self.tau <= 0:
            raise ValueError(f"tau={self.tau} must be > 0")
        if self.head_hidden < 0:
            raise ValueError(f"head_hidden={self.head_hidden} must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.exit_threshold is not None and not self.exit_threshold <= 1.0:
            raise ValueError(f"exit_threshold={self.exit_threshold} must be <= 1")
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"loss={self.loss!r} must be 'ce' or 'bce'")
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r} must be one of {POOLS}")
        if not 0.0 < self.topk <= 1.0:
            raise ValueError(f"topk={self.topk} must be in (0, 1]")
