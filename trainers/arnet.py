"""AR-Net (Meng et al., "Adaptive Frame Resolution for Efficient Action Recognition", ECCV 2020).

A policy network reads every frame it visits at the lowest resolution (eq. 1: f_t = Phi(I_t^{L-1})),
updates an LSTM (eq. 2) and picks one action a_t per frame with Gumbel-softmax (eq. 3, 5-8):
one of L resolutions (ordered high -> low) or one of M skips. Resolution l sends the frame to
backbone Psi_l for a frame prediction (eq. 4); skip i drops this frame and the next F_i - 1
frames, which the policy does not even look at. The video prediction is the mean of the chosen
frames' predictions. Loss (eq. 12): (1 - alpha) * CE (eq. 9) + alpha * GFLOPs per frame from an
offline lookup table (eq. 10) + beta * uniform-usage regulariser (eq. 11).

On cached features (this project): each resolution l is a stored view (backbone + input size,
e.g. resnet50@224 ... mobilenet_v2@84) and its "backbone" Psi_l is that cached feature followed
by a linear classifier. The paper fine-tunes the backbones; here only the classifiers (and the
policy) learn. As in the paper (footnote 4, Psi_{L-1} = Phi) the lowest view is shared: the
policy reads it, and choosing resolution L-1 costs only its classifier.

Cost lookup table (eq. 10), GMACs per decision of the learned policy: every frame the policy
visits costs Phi (the lowest view's backbone) + one LSTM step + the gate FC; resolution l < L-1
adds backbone l + classifier l; resolution L-1 adds classifier L-1; a skip adds nothing, and the
frames it skips cost nothing at all. With `policy="random"` there is no policy network: an
action costs only the chosen backbone + classifier (skips cost 0). LSTM, gate and classifier
costs are measured with `trainers.cost.module_gmacs`; backbone costs come from `ViewInfo`.

Decision codes in `MethodOutput.decisions`: 0..L-1 = resolution (view index, high -> low),
L..L+M-1 = skip F_0..F_{M-1} (the frame where the policy decided to skip), L+M = "skipped"
(a frame jumped over by an earlier skip), -1 past the end of the video.

Training stages (Table 6, `SCHEDULE`): "warmup" trains the classifiers with a uniformly random
choice of resolution per frame while the policy is frozen; "joint" trains policy and classifiers
with Gumbel-softmax sampling at temperature tau0 * exp(-0.045 * epoch); "finetune" freezes the
policy, which then decides by arg-max as at test time, and trains the classifiers on its choices.
Warm-up batches are costed with the learned policy's table although its decisions are random
(the costs that matter are measured at evaluation, where the policy decides).

Multi-label videos: CE is taken against y / |y| (plain CE for single-label videos).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainers.configs.arnet import Config
from trainers.cost import module_gmacs
from trainers.data import StoreInfo
from trainers.gumbel import annealed_tau, gumbel_softmax_st, hard_argmax
from trainers.losses import soft_cross_entropy
from trainers.method import Batch, MethodOutput, TrainState
from trainers.recurrence import cell_step, input_projections

#: (stage, fraction of the epochs): the paper's 10 warm-up, 50 joint, 50 fine-tune epochs.
SCHEDULE: list[tuple[str, float]] = [
    ("warmup", 10 / 110),
    ("joint", 50 / 110),
    ("finetune", 50 / 110),
]
STAGES = ("warmup", "joint", "finetune")


class ARNet(nn.Module):
    """Policy LSTM on the lowest view + one linear classifier per resolution (Fig. 2)."""

    needs_stages = False

    def __init__(self, cfg: Config, info: StoreInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.views = tuple(cfg.views)
        self.required_views = tuple(reversed(self.views))  # coarse -> fine
        self.num_res, self.num_skips = len(self.views), len(cfg.skips)
        num_actions = self.num_res + self.num_skips
        low = info.views[self.views[-1]]
        self.lstm = nn.LSTMCell(low.dim, cfg.hidden)  # eq. 2
        self.gate = nn.Linear(cfg.hidden, num_actions)  # z = FC(h_t), eq. 5
        self.drop = nn.Dropout(cfg.dropout)
        self.heads = nn.ModuleList(
            nn.Linear(info.views[v].dim, info.num_classes) for v in self.views
        )  # eq. 4, Psi_l = cached view l + linear classifier
        self.register_buffer("skip_lengths", torch.tensor(list(cfg.skips), dtype=torch.int64))
        props = cfg.random_proportions
        props_t = torch.ones(num_actions) if props is None else torch.tensor(list(props)).float()
        self.register_buffer("random_probs", props_t / props_t.sum())
        self.register_buffer(
            "action_gmacs", torch.tensor(self._action_table(info), dtype=torch.float64)
        )
        self.decision_names = {i: v for i, v in enumerate(self.views)}
        for i, f in enumerate(cfg.skips):
            self.decision_names[self.num_res + i] = f"skip{f}"
        self.decision_names[num_actions] = "skipped"
        self.configure_stage("joint")

    def _action_table(self, info: StoreInfo) -> list[float]:
        """GMACs per action, the offline lookup table of eq. 10 (see the module doc)."""
        low_dim = info.views[self.views[-1]].dim
        with torch.no_grad():
            h = torch.zeros(1, self.cfg.hidden)
            self.policy_step_gmacs = module_gmacs(
                self.lstm, torch.zeros(1, low_dim), (h, h.clone())
            ) + module_gmacs(self.gate, h)
            head_gmacs = [
                module_gmacs(head, torch.zeros(1, info.views[v].dim))
                for head, v in zip(self.heads, self.views)
            ]
        backbone = [info.views[v].gmacs_per_frame for v in self.views]
        if self.cfg.policy == "random":
            return [b + c for b, c in zip(backbone, head_gmacs)] + [0.0] * self.num_skips
        visit = backbone[-1] + self.policy_step_gmacs  # Phi + LSTM + gate, on every visited frame
        table = [visit + b + c for b, c in zip(backbone[:-1], head_gmacs[:-1])]
        table.append(visit + head_gmacs[-1])  # Psi_{L-1} shares Phi
        return table + [visit] * self.num_skips

    def expected_frame_gmacs(self, proportions: Sequence[float]) -> float:
        """Expected GMACs per frame when actions are drawn i.i.d. with `proportions`.

        A skip F consumes F frames, a resolution one, so the cost per frame is
        sum_i p_i * cost_i / sum_i p_i * frames_i (ignoring where videos end). Used to give the
        RANDOM baseline at least a learned policy's compute.
        """
        p = torch.tensor(list(proportions), dtype=torch.float64)
        if p.numel() != self.action_gmacs.numel() or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"need {self.action_gmacs.numel()} non-negative proportions")
        frames = torch.cat([torch.ones(self.num_res, dtype=torch.float64),
                            self.skip_lengths.to(torch.float64)])
        return float((p * self.action_gmacs).sum() / (p * frames).sum())

    def policy_parameters(self) -> list[nn.Parameter]:
        """Parameters of the policy network (LSTM + gate FC)."""
        return list(self.lstm.parameters()) + list(self.gate.parameters())

    def configure_stage(self, stage: str) -> None:
        """Freeze the policy in warm-up and fine-tune; train everything in joint (Table 6)."""
        if stage not in STAGES:
            raise ValueError(f"unknown AR-Net stage {stage!r} (stages: {STAGES})")
        self.stage = stage
        learn_policy = stage == "joint" and self.cfg.policy == "learned"
        for p in self.policy_parameters():
            p.requires_grad_(learn_policy)

    def _mode(self, state: TrainState) -> str:
        """How actions are drawn: random, warmup (random resolution), gumbel or argmax."""
        if self.cfg.policy == "random":
            return "random"
        if state.training and self.training:
            if state.stage == "warmup":
                return "warmup"
            if state.stage == "joint":
                return "gumbel"
        return "argmax"

    def _draw(self, batch_size: int, mode: str, like: torch.Tensor) -> torch.Tensor:
        """One-hot actions that do not come from the policy network."""
        if mode == "random":
            idx = torch.multinomial(self.random_probs, batch_size, replacement=True)
        else:
            idx = torch.randint(0, self.num_res, (batch_size,), device=like.device)
        return F.one_hot(idx.to(like.device), self.num_res + self.num_skips).to(like.dtype)

    def decide(self, batch: Batch, state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the policy over time: one-hot actions P [B, T, L+M] and decision codes [B, T].

        Rows of P are zero on frames the policy did not visit (skipped or past the end).
        """
        low = batch.features[self.views[-1]]
        bsz, steps, _ = low.shape
        mode = self._mode(state)
        tau = annealed_tau(self.cfg.tau0, self.cfg.tau_decay, state.epoch)
        num_actions = self.num_res + self.num_skips
        h = low.new_zeros(bsz, self.cfg.hidden)
        c = low.new_zeros(bsz, self.cfg.hidden)
        remaining = torch.zeros(bsz, dtype=torch.int64, device=low.device)
        codes = torch.full((bsz, steps), -1, dtype=torch.int64, device=low.device)
        actions = []
        policy_runs = mode in ("gumbel", "argmax")
        # the LSTM's input projection runs once over all frames (trainers.recurrence)
        lstm_inputs = input_projections(self.lstm, low) if policy_runs else ()
        valid_steps = batch.mask.unbind(1)
        for t in range(steps):
            valid = valid_steps[t]
            visit = valid & (remaining == 0)
            if policy_runs:
                h_new, c_new = cell_step(self.lstm, lstm_inputs[t], [h, c])  # eq. 1-2
                logits = self.gate(h_new)
                sample = gumbel_softmax_st(logits, tau) if mode == "gumbel" else hard_argmax(logits)
                h = torch.where(visit[:, None], h_new, h)
                c = torch.where(visit[:, None], c_new, c)
            else:
                sample = self._draw(bsz, mode, low)
            sample = sample * visit[:, None].to(sample.dtype)
            actions.append(sample)
            choice = sample.detach().argmax(dim=1)
            skipped_code = torch.full_like(choice, num_actions)
            codes[:, t] = torch.where(visit, choice, torch.where(valid, skipped_code, codes[:, t]))
            remaining = torch.where(valid & ~visit, remaining - 1, remaining)
            if self.num_skips:  # skip F_i: this frame and the next F_i - 1 are not processed
                is_skip = visit & (choice >= self.num_res)
                which = (choice - self.num_res).clamp(min=0, max=self.num_skips - 1)
                remaining = torch.where(is_skip, self.skip_lengths[which] - 1, remaining)
        return torch.stack(actions, dim=1), codes

    def forward(self, batch: Batch, state: TrainState) -> MethodOutput:
        probs, codes = self.decide(batch, state)
        return self.predict(batch, probs, codes)

    def predict(self, batch: Batch, probs: torch.Tensor, codes: torch.Tensor) -> MethodOutput:
        """Video prediction and cost for given actions P [B, T, L+M] and codes [B, T]."""
        frame_logits = torch.stack(
            [head(self.drop(batch.features[v])) for head, v in zip(self.heads, self.views)],
            dim=2,
        )  # [B, T, L, C], eq. 4 for every resolution (cheap on cached features)
        chosen = probs[..., : self.num_res]  # [B, T, L]
        total = (chosen.unsqueeze(-1) * frame_logits).sum(dim=(1, 2))
        count = chosen.sum(dim=(1, 2))
        count = count + (count.detach() == 0).to(count.dtype)  # all skipped: zero logits
        logits = total / count[:, None]
        gmacs = (probs.to(torch.float64) * self.action_gmacs).sum(dim=2)  # [B, T]
        hard = probs.detach()
        frames_used = {v: hard[:, :, i].sum(dim=1) for i, v in enumerate(self.views)}
        if self.cfg.policy == "learned":
            frames_used[self.views[-1]] = hard.sum(dim=(1, 2))  # Phi runs on every visit
        return MethodOutput(
            logits=logits,
            gflops=gmacs.sum(dim=1).detach(),
            frames_used=frames_used,
            decisions=codes,
            decision_names=dict(self.decision_names),
            extras={"action_probs": probs, "frame_gmacs": gmacs},
        )

    def loss(
        self, out: MethodOutput, batch: Batch, state: TrainState
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(1 - alpha) * L_acc + alpha * L_flops + beta * L_uni (eq. 9-12)."""
        acc = soft_cross_entropy(out.logits, batch.targets).mean()
        lengths = batch.lengths.to(torch.float64).clamp_min(1)
        flops = (out.extras["frame_gmacs"].sum(dim=1) / lengths).mean().float()  # eq. 10
        probs = out.extras["action_probs"]
        visits = probs.detach().sum().clamp_min(1)
        usage = probs.sum(dim=(0, 1)) / visits  # frequency of each action over the batch
        uni = ((usage - 1.0 / usage.numel()) ** 2).sum()  # eq. 11
        a, b = self.cfg.alpha, self.cfg.beta
        total = (1 - a) * acc + a * flops + b * uni  # eq. 12
        parts = {"acc": acc.item(), "flops": flops.item(), "uni": uni.item()}
        return total, parts


def action_shares(decisions: Iterable[Sequence[int]], num_actions: int) -> list[float]:
    """Share of each action 0..num_actions-1 among a run's policy decisions.

    Skipped-over frames (code num_actions) and padding (-1) are not decisions. Feed the result
    to `Config.random_proportions` to build the RANDOM baseline at a learned policy's cost.
    """
    counts = [0] * num_actions
    for video in decisions:
        for code in video:
            if 0 <= code < num_actions:
                counts[code] += 1
    total = sum(counts)
    if total == 0:
        raise ValueError("no policy decisions to count")
    return [c / total for c in counts]


def build(cfg: Config, info: StoreInfo) -> ARNet:
    """Validate the config against the store and build the model."""
    cfg.validate(info)
    return ARNet(cfg, info)
