"""SoF-Net (Seon, "Dynamic layer skipping for efficient action recognition", SNU thesis 2023).

One backbone; after each of N stages (res1..res5) an LSTM policy module looks at the pooled
stage feature (eq. 3.1), updates its state from the last fully processed frame (eq. 3.2) and
decides stop or forward with Gumbel-softmax (eq. 3.3-3.4). A frame that every module forwards is
classified by an MLP on the last feature (eq. 3.5); the video prediction is the softmax of the
mean logit over those frames (eq. 3.6). At inference, the video ends early once the running
prediction's top probability exceeds rho after more than T_min processed frames (eq. 3.7).

Training (eq. 3.8): alpha * CE (eq. 3.9) + (1 - alpha) * efficiency (eq. 3.10-3.11, expected
remaining GFLOPs of every forward signal) + policy guidance (eq. 3.12): beta * inner-classifier
CE on forwarded frames (eq. 3.13) + (1 - beta) * BCE of each gate against a pseudo-label "the
next stage's inner classifier is more confident in the true class" (eq. 3.14-3.15).

On cached features (this project): the stage features are the store's pooled per-stage
features of one view (eq. 3.1 is already applied) and x_t^L is the view's stored feature; the
backbone is not fine-tuned, so the MLP, the policy modules and the inner classifiers learn.
During training every module runs on every frame (the cached features allow it), the LSTM
states still advance only on fully processed frames, and gate signals of modules a frame never
reached count as stop (0) in the efficiency loss and in the cost.

Cost (GMACs, as the backbones are measured), per frame the video reaches: the cumulative stage
cost up to the stage where it stopped (`ViewInfo.stage_gmacs`) + the policy modules that ran
(W_x, LSTM step, W_g, counted with `trainers.cost.module_gmacs`); a fully processed frame pays
the whole backbone + all N modules + the MLP. The inner classifiers only guide training and are
not run at inference, so they are not counted. Frames after early termination cost nothing.

Decision codes: n in 0..N-1 = stopped at policy module n (after stage n), N = fully processed
("used"), N+1 = never seen because the video terminated early ("exit"), -1 past the end.

Stages (`SCHEDULE`, §4.2): "warmup" forwards every frame with the policy modules frozen and
trains the MLP and the inner classifiers; "joint" trains everything.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from trainers.configs.sofnet import Config
from trainers.cost import module_gmacs
from trainers.data import StoreInfo
from trainers.gumbel import annealed_tau, gumbel_softmax_st, hard_argmax
from trainers.losses import soft_cross_entropy
from trainers.method import Batch, MethodOutput, TrainState
from trainers.recurrence import cell_step, input_projections

#: (stage, fraction of the epochs): the paper's 15 warm-up and 60 joint epochs.
SCHEDULE: list[tuple[str, float]] = [("warmup", 15 / 75), ("joint", 60 / 75)]
STAGES = ("warmup", "joint")


class PolicyModule(nn.Module):
    """One stop-or-forward module: FC (W_x), LSTM, gating FC (W_g), inner classifier (W_cls)."""

    def __init__(self, in_dim: int, embed: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, embed)  # W_x, eq. 3.2
        self.lstm = nn.LSTMCell(embed, hidden)  # eq. 3.2
        self.gate = nn.Linear(hidden, 2)  # W_g, eq. 3.3; index 0 = stop, 1 = forward
        self.inner = nn.Linear(hidden, num_classes)  # W_cls, eq. 3.13

    def lstm_inputs(self, stage_features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The LSTM's input projection of W_x x_t for every frame, in one pass (see
        trainers.recurrence): a tuple of T tensors [B, 4H]."""
        return input_projections(self.lstm, self.fc(stage_features))

    def lstm_input_sequence(self, stage_features: torch.Tensor) -> torch.Tensor:
        """The same projections as one tensor [B, T, 4H] (for the batched step of SoFNet)."""
        return torch.matmul(self.fc(stage_features), self.lstm.weight_ih.t()) + self.lstm.bias_ih

    def step(
        self, lstm_input: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New (h, c) and gate logits q (eq. 3.2-3.3) from one element of `lstm_inputs`."""
        h, c = cell_step(self.lstm, lstm_input, list(state))
        return h, c, self.gate(h)

    def policy_parameters(self) -> list[nn.Parameter]:
        """The parameters that make the decision (the inner classifier only guides training)."""
        return [*self.fc.parameters(), *self.lstm.parameters(), *self.gate.parameters()]


class SoFNet(nn.Module):
    """Stop-or-forward policy modules over cached stage features + MLP classifier (Fig. 3.1)."""

    needs_stages = True

    def __init__(self, cfg: Config, info: StoreInfo) -> None:
        super().__init__()
        self.cfg = cfg
        view = info.views[cfg.view]
        self.view = cfg.view
        self.required_views = (cfg.view,)
        by_cost = sorted(view.stage_dims, key=lambda s: view.stage_gmacs[s])
        self.stages = tuple(cfg.stages) if cfg.stages is not None else tuple(by_cost)
        self.stages = tuple(sorted(self.stages, key=lambda s: view.stage_gmacs[s]))
        n = len(self.stages)
        self.policies = nn.ModuleList(
            PolicyModule(view.stage_dims[s], cfg.embed, cfg.hidden, info.num_classes)
            for s in self.stages
        )
        with torch.no_grad():
            for pm in self.policies:
                pm.gate.bias.copy_(torch.tensor([0.0, cfg.forward_bias]))
        self.mlp = nn.Sequential(  # eq. 3.5
            nn.Linear(view.dim, cfg.mlp_hidden), nn.ReLU(), nn.Linear(cfg.mlp_hidden, info.num_classes)
        )
        self._count_costs(info)
        self.decision_names = {i: f"stop@{s}" for i, s in enumerate(self.stages)}
        self.decision_names[n] = "used"
        self.decision_names[n + 1] = "exit"
        self.configure_stage("joint")

    def _count_costs(self, info: StoreInfo) -> None:
        """Per-module cost (stage increment + policy module) and the lookup of eq. 3.10."""
        view = info.views[self.view]
        cum = [view.stage_gmacs[s] for s in self.stages]
        full = max(view.stage_gmacs.values())  # f_GFLOPs(L): the whole backbone
        with torch.no_grad():
            module_cost = []
            for pm, s in zip(self.policies, self.stages):
                h = torch.zeros(1, self.cfg.hidden)
                module_cost.append(
                    module_gmacs(pm.fc, torch.zeros(1, view.stage_dims[s]))
                    + module_gmacs(pm.lstm, torch.zeros(1, self.cfg.embed), (h, h.clone()))
                    + module_gmacs(pm.gate, h)
                )
            self.mlp_gmacs = module_gmacs(self.mlp, torch.zeros(1, view.dim))
        self.module_step_gmacs = module_cost
        self.full_gmacs = full
        increments = [cum[0]] + [b - a for a, b in pairwise(cum)]
        # cost paid when module n runs: the stage up to it + the module itself
        self.register_buffer(
            "reach_gmacs",
            torch.tensor([i + m for i, m in zip(increments, module_cost)], dtype=torch.float64),
        )
        # remaining layers after the last module + MLP, paid by fully processed frames
        self.tail_gmacs = full - cum[-1] + self.mlp_gmacs
        self.register_buffer("lookup", torch.tensor([full - c for c in cum], dtype=torch.float64))

    def configure_stage(self, stage: str) -> None:
        """Warm-up freezes the decision parts of the policy modules; joint trains everything."""
        if stage not in STAGES:
            raise ValueError(f"unknown SoF-Net stage {stage!r} (stages: {STAGES})")
        self.stage = stage
        for pm in self.policies:
            for p in pm.policy_parameters():
                p.requires_grad_(stage == "joint")

    def _gate(self, q: torch.Tensor, mode: str, tau: float) -> torch.Tensor:
        """Forward signals g in {0, 1} [..., ] from gate logits q [..., 2] (eq. 3.4;
        straight-through when sampled)."""
        if mode == "forced":
            return q.new_ones(q.shape[:-1])
        if mode == "gumbel":
            return gumbel_softmax_st(q, tau)[..., 1]
        return hard_argmax(q)[..., 1]

    def _stacked(self) -> tuple[torch.Tensor, ...]:
        """The N modules' recurrent and gating weights stacked for one batched matmul each:
        W_hh^T [N, H, 4H], b_hh [N, 1, 4H], W_g^T [N, H, 2], b_g [N, 1, 2]."""
        pms = self.policies
        return (torch.stack([pm.lstm.weight_hh.t() for pm in pms]),
                torch.stack([pm.lstm.bias_hh for pm in pms])[:, None],
                torch.stack([pm.gate.weight.t() for pm in pms]),
                torch.stack([pm.gate.bias for pm in pms])[:, None])

    def forward(self, batch: Batch, state: TrainState) -> MethodOutput:
        feats = batch.stages[self.view]
        # W_x and the LSTM input projections run once over all frames; the loop reads per-step
        # tuples (no [:, t] indexing of tensors that need gradients: see trainers.recurrence).
        # The N modules' LSTM steps (eq. 3.2) and gates (eq. 3.3-3.4) do not depend on each
        # other's decisions within a frame, so they run as one batched step over [N, B, ...];
        # only the product of eq. 3.6 chains them.
        xs = torch.stack([pm.lstm_input_sequence(feats[s])
                          for pm, s in zip(self.policies, self.stages)]).unbind(2)  # T x [N,B,4H]
        w_hh, b_hh, w_g, b_g = self._stacked()
        bsz, steps = batch.mask.shape
        n = len(self.stages)
        training = state.training and self.training
        mode = ("forced" if state.stage == "warmup" else "gumbel") if training else "argmax"
        if not self.cfg.layer_skipping:
            mode = "forced"
        tau = annealed_tau(self.cfg.tau0, self.cfg.tau_decay, state.epoch)
        early = (not training) and self.cfg.early_termination
        frame_logits = self.mlp(batch.features[self.view])  # [B, T, C], eq. 3.5
        like = frame_logits
        frame_steps = frame_logits.unbind(1)
        valid_steps = batch.mask.unbind(1)
        h = like.new_zeros(n, bsz, self.cfg.hidden)
        c = like.new_zeros(n, bsz, self.cfg.hidden)
        total = like.new_zeros(bsz, frame_logits.shape[-1])
        count = like.new_zeros(bsz)
        ended = torch.zeros(bsz, dtype=torch.bool, device=like.device)
        codes = torch.full((bsz, steps), -1, dtype=torch.int64, device=like.device)
        gates, q_all, hidden_all, frame_cost = [], [], [], []
        for t in range(steps):
            valid = valid_steps[t]
            seen = (valid & ~ended).to(like.dtype)  # 1 while the frame is still being forwarded
            i, f, g, o = (xs[t] + torch.baddbmm(b_hh, h, w_hh)).chunk(4, dim=2)  # eq. 3.2
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            q = torch.baddbmm(b_g, h_new, w_g)  # [N, B, 2], eq. 3.3
            passed = torch.cumprod(self._gate(q, mode, tau), dim=0)  # [N, B], eq. 3.4
            emitted = seen * passed  # forward signal actually emitted (0 if never reached)
            reached = torch.cat([seen[None], emitted[:-1]])  # module n ran on the frame
            s_t = emitted[-1]  # eq. 3.6: s_t = prod_n g_t^(n)
            used = (s_t.detach() > 0.5)[None, :, None]
            h = torch.where(used, h_new, h)  # states advance only on fully processed frames
            c = torch.where(used, c_new, c)
            total = total + s_t[:, None] * frame_steps[t]
            count = count + s_t
            stop_at = emitted.detach().sum(dim=0).long()  # modules passed
            codes[:, t] = torch.where(
                seen > 0, stop_at, torch.where(valid, torch.full_like(stop_at, n + 1), codes[:, t])
            )
            cost = (reached.detach().t().to(torch.float64) * self.reach_gmacs).sum(dim=1)
            frame_cost.append(cost + used[0, :, 0].to(torch.float64) * self.tail_gmacs)
            gates.append(emitted.t())
            q_all.append(q.transpose(0, 1))
            hidden_all.append(h_new.transpose(0, 1))
            if early:  # eq. 3.7 after the T-bar-th processed frame, T-bar > T_min
                processed = count.detach()
                prob = F.softmax(total / processed.clamp_min(1e-6)[:, None], dim=1)
                confident = (prob.max(dim=1).values > self.cfg.rho) & (processed > self.cfg.t_min)
                ended = ended | (confident & valid)
        safe = count + (count.detach() == 0).to(count.dtype)
        logits = total / safe[:, None]  # eq. 3.6 (before the softmax); zeros if nothing used
        frame_cost_t = torch.stack(frame_cost, dim=1)  # [B, T]
        hidden = torch.stack(hidden_all, dim=1)  # [B, T, N, H]
        inner = torch.stack([pm.inner(hidden[:, :, k]) for k, pm in enumerate(self.policies)], 2)
        return MethodOutput(
            logits=logits,
            gflops=frame_cost_t.sum(dim=1),
            # the thesis' frame usage: frames that ran the whole backbone; frames stopped
            # early are paid for in `gflops` up to their stage and visible in `decisions`
            frames_used={self.view: (codes == n).sum(dim=1)},
            decisions=codes,
            decision_names=dict(self.decision_names),
            extras={
                "gates": torch.stack(gates, dim=1),  # [B, T, N] emitted forward signals
                "gate_logits": torch.stack(q_all, dim=1),  # [B, T, N, 2]
                "inner_logits": inner,  # [B, T, N, C], p_t^(n) of eq. 3.13
                "frames_full": (codes == n).sum(dim=1),
            },
        )

    def loss(
        self, out: MethodOutput, batch: Batch, state: TrainState
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """alpha * L_cls + (1 - alpha) * L_eff + beta * L_inner + (1 - beta) * L_self (eq. 3.8)."""
        cls = soft_cross_entropy(out.logits, batch.targets).mean()  # eq. 3.9
        gates = out.extras["gates"]  # [B, T, N]
        n = gates.shape[-1]
        mask = batch.mask.to(gates.dtype)  # [B, T]
        lengths = mask.sum(dim=1).clamp_min(1)
        expected = (gates.to(torch.float64) * self.lookup).sum(dim=2).float()  # [B, T]
        eff = (expected.sum(dim=1) / (lengths * n)).mean()  # eq. 3.11
        inner = out.extras["inner_logits"]  # [B, T, N, C]
        targets = batch.targets[:, None, None, :].expand_as(inner)
        inner_ce = soft_cross_entropy(inner, targets)  # [B, T, N]
        q = out.extras["gate_logits"]
        w = (gates.detach() > 0.5).to(inner_ce.dtype) * mask[:, :, None]
        inner_loss = (w * inner_ce).sum() / w.sum().clamp_min(1)  # eq. 3.13
        if n > 1:
            weights = batch.targets / batch.targets.sum(dim=1, keepdim=True).clamp_min(1.0)
            p_true = (F.softmax(inner.detach(), dim=-1) * weights[:, None, None, :]).sum(dim=-1)
            pseudo = (p_true[:, :, 1:] > p_true[:, :, :-1]).to(q.dtype)  # eq. 3.14
            forward_logit = q[:, :, :-1, 1] - q[:, :, :-1, 0]
            bce = F.binary_cross_entropy_with_logits(forward_logit, pseudo, reduction="none")
            self_loss = (bce * mask[:, :, None]).sum() / (lengths.sum() * (n - 1))  # eq. 3.15
        else:
            self_loss = cls.new_zeros(())
        a, b = self.cfg.alpha, self.cfg.beta
        total = a * cls + (1 - a) * eff + b * inner_loss + (1 - b) * self_loss
        parts = {
            "cls": cls.item(),
            "eff": eff.item(),
            "inner": inner_loss.item(),
            "self": self_loss.item(),
        }
        return total, parts


def build(cfg: Config, info: StoreInfo) -> SoFNet:
    """Validate the config against the store and build the model."""
    cfg.validate(info)
    return SoFNet(cfg, info)
