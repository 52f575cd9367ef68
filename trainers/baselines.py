"""The non-adaptive baselines of LiteEval's Table 1: Uniform, LSTM, Uniform+CF, LSTM+CF.

They run their view(s) on every frame they look at, so their cost is the reference the
adaptive methods are compared with. Method names (trainers/methods.py) pick the preset:
`uniform` / `lstm` read `view` (default the fine view); `uniform-cf` / `lstm-cf` also read
`concat_view` (the coarse view) and concatenate both features per frame, as LiteEval's "+CF"
rows do.

- Uniform: a linear classifier per frame; the video score is the mean of the per-frame
  softmax predictions (over all stored frames, or `frames` uniformly spaced ones, e.g. 25 as
  in LiteEval §4.2). logits = log(mean probability), so softmax(logits) is that mean.
- LSTM: an LSTM over the frames; prediction from the hidden state at the last valid frame
  (`readout='last'`, as in LiteEval) or the mean over valid frames (`readout='mean'`).

Decisions per frame: 0 = features computed, 1 = skipped (only with `frames`), -1 = past end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from trainers.cost import frames_cost, module_gmacs, policy_cost
from trainers.data import StoreInfo
from trainers.method import Batch, MethodOutput, TrainState


def run_defaults(method: str) -> dict:
    """Loop settings for `method` (trainers.config applies them under file, flags and --set).

    Uniform scores a video by the mean of its frames' softmax, so on background-dominated
    videos only the few class frames move the classifier and it needs large logits: at Adam
    1e-3 it is still near chance after 10 epochs (issue 8: 0.21 test mAP; 1e-2: 0.956).
    """
    return {"lr": 1e-2} if method.startswith("uniform") else {}


@dataclass
class Config:
    """kind: 'uniform' or 'lstm'. view: the features classified. concat_view: a second view
    concatenated per frame (the +CF variants), or None. frames: look at this many uniformly
    spaced frames per video (None = all). hidden: LSTM units. readout: 'last' or 'mean'
    (LSTM). dropout: before the classifier."""

    kind: Literal["uniform", "lstm"] = "uniform"
    view: str = "fine"
    concat_view: str | None = None
    frames: int | None = None
    hidden: int = 128
    readout: Literal["last", "mean"] = "last"
    dropout: float = 0.0

    def validate(self, info: StoreInfo) -> None:
        """Refuse views the store lacks and sizes that cannot work, naming the value."""
        for key in ("view", "concat_view"):
            value = getattr(self, key)
            if value is not None and value not in info.views:
                raise ValueError(f"{key}={value!r} is not a view of the store "
                                 f"(has {sorted(info.views)})")
        if self.concat_view == self.view:
            raise ValueError(f"concat_view={self.concat_view!r} repeats view")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"frames={self.frames} must be >= 1 or None")
        if self.hidden < 1:
            raise ValueError(f"hidden={self.hidden} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


def uniform_frames(lengths: torch.Tensor, t: int, k: int | None) -> torch.Tensor:
    """bool [B, T]: k frames uniformly spaced over each video (all valid frames if k is None)."""
    valid = torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]
    if k is None:
        return valid
    picked = torch.zeros_like(valid)
    for i, n in enumerate(lengths.tolist()):
        idx = torch.linspace(0, n - 1, min(k, n), device=lengths.device).round().long()
        picked[i, idx] = True
    return picked


class Baseline(nn.Module):
    """Uniform or LSTM classifier over one view (or two concatenated)."""

    needs_stages = False

    def __init__(self, cfg: Config, info: StoreInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.info = info
        # coarse -> fine order; the finest (accounted as "fine usage") last
        self.required_views = (cfg.concat_view, cfg.view) if cfg.concat_view else (cfg.view,)
        dim = sum(info.views[v].dim for v in self.required_views)
        c = info.num_classes
        self.lstm = nn.LSTM(dim, cfg.hidden, batch_first=True) if cfg.kind == "lstm" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden if self.lstm is not None else dim, c)
        # the classifier's own cost per frame it looks at, counted like the backbones'
        step = module_gmacs(self.head, torch.zeros(1, self.head.in_features))
        if self.lstm is not None:
            step += module_gmacs(self.lstm, torch.zeros(1, 1, dim))
        self.step_gmacs = step
        names = "+".join(self.required_views)
        self.decision_names = {0: names, 1: "skipped"}

    def forward(self, batch: Batch, state: TrainState) -> MethodOutput:
        x = torch.cat([batch.features[v] for v in self.required_views], dim=-1)
        t = x.shape[1]
        picked = uniform_frames(batch.lengths, t, self.cfg.frames)
        n = picked.sum(dim=1)
        if self.lstm is None:
            probs = torch.softmax(self.head(self.dropout(x)), dim=-1)
            mean = (probs * picked[..., None]).sum(1) / n[:, None]
            logits = torch.log(mean.clamp_min(1e-12))
        else:
            # gather the picked frames to the front so the LSTM sees them in order
            order = torch.argsort((~picked).to(torch.int8), dim=1, stable=True)
            seq = torch.gather(x, 1, order[..., None].expand_as(x))
            # the LSTM is causal, so running it over the zero padding changes nothing before
            # each video's end: read the state at the last picked frame (or the mean)
            hs, _ = self.lstm(seq)
            if self.cfg.readout == "last":
                h = hs[torch.arange(len(n), device=hs.device), n - 1]
            else:
                valid = torch.arange(hs.shape[1], device=hs.device)[None, :] < n[:, None]
                h = (hs * valid[..., None]).sum(1) / n[:, None]
            logits = self.head(self.dropout(h))
        used = {v: n for v in self.required_views}
        gflops = frames_cost(used, self.info) + policy_cost(self.step_gmacs, n)
        valid = batch.mask
        decisions = torch.where(picked, 0, 1).masked_fill(~valid, -1)
        return MethodOutput(logits, gflops, used, decisions, dict(self.decision_names))

    def loss(
        self, out: MethodOutput, batch: Batch, state: TrainState
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy against the label distribution (uniform over a video's labels, so
        single-label videos get plain cross-entropy and scores stay softmax-comparable)."""
        target = batch.targets / batch.targets.sum(1, keepdim=True).clamp_min(1.0)
        loss = -(target * torch.log_softmax(out.logits, dim=-1)).sum(1).mean()
        return loss, {"ce": loss.item()}


def build(cfg: Config, info: StoreInfo) -> Baseline:
    """The baseline described by `cfg` for a store described by `info`."""
    return Baseline(cfg, info)
