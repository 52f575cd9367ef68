"""LiteEval (Wu et al., "A Coarse-to-Fine Framework for Resource Efficient Video Recognition").

A coarse RNN reads cheap features of every frame (eq. 1); a one-layer gate looks at the coarse
feature and the fine RNN's previous state and decides whether this frame is worth the expensive
fine feature (eq. 2); the fine RNN reads [coarse, fine] only on those frames (eq. 3-4) and, when
the gate skips, takes a copy of the coarse state in its first D^c units so that it always knows
everything seen so far (eq. 5); the video is classified from the fine state (eq. 6; by
default from the mean of the fine states at the frames the gate read, `readout` in
trainers/configs/liteeval.py says why). Training
minimises cross-entropy plus lambda * (fraction of fine frames - gamma)^2 (eq. 7) through a
straight-through Gumbel-softmax gate whose temperature is annealed from high to low (eq. 8-9);
at test time the gate takes the argmax. `gate="reinforce"` is LiteEval-RL (Table 1): the same
model with Bernoulli sampling and a policy gradient instead of Gumbel-softmax.

Multi-label videos: eq. 7 is a cross-entropy against a one-hot label. We keep one softmax
classifier (eq. 6) and use the normalised multi-hot vector y/|y| as the target, which is exactly
eq. 7 for single-label videos and spreads the probability mass evenly over the labels of a
multi-label video; `loss="bce"` switches to independent sigmoids instead.

Cost accounting (GMACs, as the backbones are measured): the coarse backbone and the coarse RNN
and gate run on every frame; the fine backbone and the fine RNN run on frames where the gate
fired; the classifier runs once per emitted prediction. The RNN, gate and classifier costs are
counted with `trainers.cost.module_gmacs`, so they are measured, not typed.

Online recognition under a budget of K fine features (Fig. 2) is the LiteEval specs' extra
evaluation, `c2f eval RUN --online-budget K...` (trainers/online.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.configs.liteeval import Config
from trainers.cost import module_gmacs
from trainers.data import StoreInfo
from trainers.losses import soft_cross_entropy, video_loss
from trainers.method import Batch, MethodOutput, TrainState
from trainers.recurrence import cell_step, input_projections, lstm_states

DECISION_NAMES = {0: "coarse", 1: "fine"}


def temperature(cfg: Config, epoch: int) -> float:
    """Gumbel-softmax temperature at `epoch`: exponential decay from tau_start to tau_end."""
    return max(cfg.tau_end, cfg.tau_start * cfg.tau_decay**epoch)


class LiteEval(nn.Module):
    """Coarse RNN + conditional gate + fine RNN with synchronisation (Fig. 1, Algorithm 1)."""

    needs_stages = False

    def __init__(self, cfg: Config, info: StoreInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.required_views = (cfg.coarse_view, cfg.fine_view)
        coarse, fine = info.views[cfg.coarse_view], info.views[cfg.fine_view]
        self.coarse_gmacs = float(coarse.gmacs_per_frame)
        self.fine_gmacs = float(fine.gmacs_per_frame)
        dc, df, hc, hf = coarse.dim, fine.dim, cfg.coarse_hidden, cfg.fine_hidden
        cell = nn.LSTMCell if cfg.cell == "lstm" else nn.GRUCell
        # eq. 1 does not depend on the gate, so the coarse RNN runs over the whole sequence at
        # once (same recurrence as stepping a cell, much faster)
        self.coarse_rnn = (nn.LSTM if cfg.cell == "lstm" else nn.GRU)(dc, hc, batch_first=True)
        self.gate = nn.Linear(dc + hf, 2)  # eq. 2: b_t = W_g^T [v_t^c, h_{t-1}^f]
        self.fine_rnn = cell(dc + df, hf)  # eq. 3
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(hf, info.num_classes)  # eq. 6
        self.uniform_head = nn.Linear(df, info.num_classes) if cfg.baseline_head else None
        self._count_policy_costs(dc, df)

    def _count_policy_costs(self, dc: int, df: int) -> None:
        """Measure the per-step GMACs of the RNN cells, the gate and the classifier once."""
        hf = self.cfg.fine_hidden
        lstm = self.cfg.cell == "lstm"

        def state(h: int) -> tuple[torch.Tensor, ...] | torch.Tensor:
            return (torch.zeros(1, h), torch.zeros(1, h)) if lstm else torch.zeros(1, h)

        with torch.no_grad():
            self.coarse_step_gmacs = module_gmacs(self.coarse_rnn, torch.zeros(1, 1, dc))
            self.coarse_step_gmacs += module_gmacs(self.gate, torch.zeros(1, dc + hf))
            self.fine_step_gmacs = module_gmacs(self.fine_rnn, torch.zeros(1, dc + df), state(hf))
            self.classifier_gmacs = module_gmacs(self.classifier, torch.zeros(1, hf))

    def _coarse_states(self, vc: torch.Tensor) -> list[torch.Tensor]:
        """h^c_t (and the LSTM cell c^c_t) for every step: [B, T, D^c] each."""
        if self.cfg.cell == "gru":
            return [self.coarse_rnn(vc)[0]]
        # nn.LSTM returns only the last cell state; eq. 5 also copies c^c_t, so rebuild it
        return list(lstm_states(self.coarse_rnn, vc))

    def _state(self, batch_size: int, hidden: int, like: torch.Tensor) -> list[torch.Tensor]:
        zeros = like.new_zeros(batch_size, hidden)
        return [zeros, zeros.clone()] if self.cfg.cell == "lstm" else [zeros]

    def _decide(
        self, gate_logits: torch.Tensor, state: TrainState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """B_t in {0,1} (float, differentiable for Gumbel) and its log-probability (for RL)."""
        if not (state.training and self.training):
            return gate_logits.argmax(dim=1).float(), gate_logits.new_zeros(gate_logits.shape[0])
        if self.cfg.gate == "gumbel":
            # eq. 8-9 with straight-through: hard 0/1 forward, soft gradient backward
            sample = F.gumbel_softmax(gate_logits, tau=temperature(self.cfg, state.epoch), hard=True)
            return sample[:, 1], gate_logits.new_zeros(gate_logits.shape[0])
        dist = torch.distributions.Categorical(logits=gate_logits)
        action = dist.sample()
        return action.float(), dist.log_prob(action)

    def _running_readout(self, fine_states: list[torch.Tensor], step_mask: torch.Tensor,
                         gate_t: torch.Tensor) -> torch.Tensor:
        """Running readout [B, T, D^f] at every step (the last valid one classifies the video).

        "mean": mean of h^f_t over the valid steps so far: the loss reaches every step's state
        directly, not only through the last frames. "fine": mean of h^f_t over the steps whose
        fine feature was read (weights B_t, straight-through), the plain mean until the first
        one: background frames that the gate skipped do not dilute the video's state.
        """
        states = torch.stack(fine_states, dim=1)
        seen = step_mask.cumsum(dim=1)
        running = (states * step_mask.unsqueeze(2)).cumsum(dim=1) / seen.clamp_min(1.0)[..., None]
        if self.cfg.readout == "mean":
            return running
        read = gate_t.cumsum(dim=1)
        weighted = (states * gate_t.unsqueeze(2)).cumsum(dim=1) / read.clamp_min(1.0)[..., None]
        return torch.where((read.detach() > 0).unsqueeze(2), weighted, running)

    def forward(self, batch: Batch, state: TrainState) -> MethodOutput:
        vc = batch.features[self.cfg.coarse_view]
        vf = batch.features[self.cfg.fine_view]
        bsz, steps, dc = vc.shape
        hc_dim = self.cfg.coarse_hidden
        # what does not depend on the gate runs once over the whole sequence (module
        # trainers.recurrence): eq. 1 for every t, the fine RNN's input projection of eq. 3 and
        # the coarse half of the gate's eq. 2; only the recurrence steps per frame
        # eq. 5 as "keep the last D^f - D^c units, add h^c padded to D^f": no per-step slices
        pad = (0, self.cfg.fine_hidden - hc_dim)
        coarse_steps = list(zip(*(F.pad(h, pad).unbind(1) for h in self._coarse_states(vc))))
        keep_fine = vc.new_ones(self.cfg.fine_hidden)
        keep_fine[:hc_dim] = 0
        fine_inputs = input_projections(self.fine_rnn, torch.cat([vc, vf], dim=2))
        gate_w = self.gate.weight
        gate_coarse = (torch.matmul(vc, gate_w[:, :dc].t()) + self.gate.bias).unbind(1)
        gate_hidden = gate_w[:, dc:].t()
        valid_steps = batch.mask.unsqueeze(2).unbind(1)
        fine = self._state(bsz, self.cfg.fine_hidden, vc)
        gates, log_probs, fine_states = [], [], []
        keep_steps = not (state.training and self.training) or self.cfg.readout != "last"
        for t in range(steps):
            valid = valid_steps[t]
            gate_logits = gate_coarse[t] + torch.matmul(fine[0], gate_hidden)  # eq. 2
            b, log_p = self._decide(gate_logits, state)
            new_fine = cell_step(self.fine_rnn, fine_inputs[t], fine)  # eq. 3
            if self.cfg.no_sync:
                skipped = fine
            else:  # eq. 5: copy h^c (and the LSTM cell c^c) into the first D^c units
                skipped = [c + f * keep_fine for c, f in zip(coarse_steps[t], fine)]
            gate_b = b.unsqueeze(1)
            mixed = [sk + gate_b * (nf - sk) for nf, sk in zip(new_fine, skipped)]  # eq. 4
            fine = [torch.where(valid, n, o) for n, o in zip(mixed, fine)]
            gates.append(b)
            log_probs.append(log_p)
            if keep_steps:
                fine_states.append(fine[0])
        step_mask = batch.mask.to(vc.dtype)
        gate_t = torch.stack(gates, dim=1) * step_mask  # B_t, differentiable (straight-through)
        if self.cfg.readout in ("mean", "fine"):
            running = self._running_readout(fine_states, step_mask, gate_t)
            last = (batch.lengths - 1).clamp_min(0)
            video_state = running[torch.arange(bsz, device=vc.device), last]
        else:
            video_state = fine[0]  # eq. 6 at the last valid step
        logits = self.classifier(self.drop(video_state))
        decisions = torch.where(batch.mask, gate_t.detach().round().long(), -1)
        lengths = batch.lengths.to(vc.dtype)
        n_fine = (decisions == 1).sum(dim=1)
        gflops = (
            lengths * (self.coarse_gmacs + self.coarse_step_gmacs)
            + n_fine.to(vc.dtype) * (self.fine_gmacs + self.fine_step_gmacs)
            + self.classifier_gmacs
        )
        extras = {
            "log_probs": torch.stack(log_probs, dim=1) * step_mask,
            "fine_fraction": gate_t.sum(dim=1) / lengths.clamp_min(1.0),
        }
        if not (state.training and self.training):
            extras["step_logits"] = self.classifier(
                running if self.cfg.readout != "last" else torch.stack(fine_states, dim=1))
        if self.uniform_head is not None:
            extras["uniform_frame_logits"] = self.uniform_head(vf.detach())
        return MethodOutput(
            logits=logits,
            gflops=gflops.detach(),
            frames_used={
                self.cfg.coarse_view: batch.lengths.clone(),
                self.cfg.fine_view: n_fine,
            },
            decisions=decisions,
            decision_names=dict(DECISION_NAMES),
            extras=extras,
        )

    def loss(
        self, out: MethodOutput, batch: Batch, state: TrainState
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cls = video_loss(out.logits, batch.targets, self.cfg.loss)
        usage = out.extras["fine_fraction"]
        usage_term = self.cfg.lam * (usage - self.cfg.gamma) ** 2  # eq. 7, second term
        total = cls.mean()
        parts = {"cls": cls.mean().item(), "usage": usage.mean().item()}
        if self.cfg.gate == "gumbel":
            total = total + usage_term.mean()
        else:
            # LiteEval-RL: reward = -(classification loss + usage penalty), batch-mean baseline
            reward = -(cls + usage_term).detach()
            advantage = reward - reward.mean()
            policy = -(advantage * out.extras["log_probs"].sum(dim=1)).mean()
            total = total + policy
            parts["policy"] = policy.item()
        if "uniform_frame_logits" in out.extras:
            frame_logits = out.extras["uniform_frame_logits"]
            mask = batch.mask.unsqueeze(2).to(frame_logits.dtype)
            # as the Uniform baseline: video score = mean of the frames' softmax predictions
            probs = (F.softmax(frame_logits, dim=2) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            aux = soft_cross_entropy(probs.clamp_min(1e-8).log(), batch.targets).mean()
            total = total + aux
            parts["uniform_head"] = aux.item()
        parts["tau"] = temperature(self.cfg, state.epoch)
        return total, parts




def build(cfg: Config, info: StoreInfo) -> LiteEval:
    """Validate `cfg` against the store and build the model."""
    cfg.validate(info)
    return LiteEval(cfg, info)


