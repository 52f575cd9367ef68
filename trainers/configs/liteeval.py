"""Config of LiteEval (trainers/liteeval.py).

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
    """LiteEval hyperparameters (defaults: the paper's ActivityNet sizes, lambda=2, gamma=0.05).

    coarse_view / fine_view: store views read by the coarse and fine RNNs.
    cell: "lstm" or "gru" (Table 6).
    coarse_hidden / fine_hidden: D^c and D^f; eq. 5 needs D^c <= D^f (FCVID: 512 / 2048).
    gamma: target fraction of frames that use fine features (eq. 7, Table 7).
    lam: lambda, weight of the usage term (eq. 7).
    tau_start / tau_end / tau_decay: Gumbel temperature tau = max(tau_end,
        tau_start * tau_decay**epoch) (eq. 9, annealed from high to low).
    no_sync: ablation of Table 8, the fine RNN keeps h^f_{t-1} when the gate skips.
    gate: "gumbel" (LiteEval) or "reinforce" (LiteEval-RL).
    loss: "ce" (soft-target cross-entropy, see module doc) or "bce".
    dropout: dropout on the fine state before the classifier.
    baseline_head: also train a per-frame linear classifier on detached fine features whose
        video score is the mean of its frames' softmax (the Uniform-fine classifier used by
        `trainers.online`); it takes no part in LiteEval's decisions, prediction or cost.
    readout: what the classifier reads: "fine" (default), the mean of h^f_t over the steps
        whose fine feature was read (weights B_t, straight-through; the plain mean until the
        first read), "mean" of h^f_t over all valid steps, or "last", h^f_T (eq. 6, the paper).
        Why not eq. 6: the loss then reaches the input mostly through the last frames (at init
        on a realistic generated store: 75% of the input gradient on the last 5 frames, 6% on
        the class segment), so a fast rate fits the last frames' noise and memorises the
        training videos (lr 1e-2: train 1.00 / test 0.42 mAP). Why not the plain mean: on
        background-dominated videos the mean is mostly background states, which carry each
        video's look, so it still memorises (a 400-video version of the store of
        tests/test_defaults_measured.py, defaults: "mean" test 0.71, train 1.00; "fine" 0.96):
        the gate already picks the frames worth reading, and reading out only their states is
        what makes LiteEval beat Uniform-fine there.
    """

    coarse_view: str = "coarse"
    fine_view: str = "fine"
    cell: str = "lstm"
    coarse_hidden: int = 64
    fine_hidden: int = 512
    gamma: float = 0.05
    lam: float = 2.0
    tau_start: float = 5.0
    tau_end: float = 0.5
    tau_decay: float = 0.7
    no_sync: bool = False
    gate: str = "gumbel"
    loss: str = "ce"
    dropout: float = 0.0
    baseline_head: bool = True
    readout: str = "fine"

    def validate(self, info: StoreInfo) -> None:
        """Refuse values the model cannot run with, naming the bad one."""
        for key in ("coarse_view", "fine_view"):
            view = getattr(self, key)
            if view not in info.views:
                raise ValueError(
                    f"{key}={view!r} is not a view of the store (views: {sorted(info.views)})"
                )
        if self.coarse_view == self.fine_view:
            raise ValueError(f"coarse_view and fine_view must differ, both are {self.fine_view!r}")
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"cell={self.cell!r} must be 'lstm' or 'gru'")
        if self.coarse_hidden < 1 or self.fine_hidden < 1:
            raise ValueError(
                f"hidden sizes must be positive (coarse_hidden={self.coarse_hidden}, "
                f"fine_hidden={self.fine_hidden})"
            )
        if self.coarse_hidden > self.fine_hidden:
            raise ValueError(
                f"coarse_hidden={self.coarse_hidden} must not exceed fine_hidden="
                f"{self.fine_hidden}: eq. 5 copies h^c into the first D^c units of h^f"
            )
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma={self.gamma} must be in [0, 1]")
        if self.lam < 0:
            raise ValueError(f"lam={self.lam} must be >= 0")
        if not (self.tau_start > 0 and self.tau_end > 0 and self.tau_end <= self.tau_start):
            raise ValueError(
                f"need 0 < tau_end <= tau_start (tau_start={self.tau_start}, "
                f"tau_end={self.tau_end})"
            )
        if not 0.0 < self.tau_decay <= 1.0:
            raise ValueError(f"tau_decay={self.tau_decay} must be in (0, 1]")
        if self.gate not in ("gumbel", "reinforce"):
            raise ValueError(f"gate={self.gate!r} must be 'gumbel' or 'reinforce'")
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"loss={self.loss!r} must be 'ce' or 'bce'")
        if self.readout not in ("mean", "fine", "last"):
            raise ValueError(f"readout={self.readout!r} must be 'mean', 'fine' or 'last'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
