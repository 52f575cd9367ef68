"""SoF-Net end to end: frames stop early in training as in inference.

On cached features every frame has every stage's features, so `trainers.sofnet.SoFNet` runs
every policy module on every frame and applies the stop decisions to scores and costs. End
to end the backbone is live, so `StopOrForward` runs it the way the thesis' inference does
(Seon 2023, §3.2, Fig. 3.1): frame by frame (the policy of frame t reads the LSTM state of the
last fully processed frame, eq. 3.2, so frames cannot be batched over time), the B videos of a
batch together; after stage l_n the policy module n decides stop or forward (eq. 3.1-3.4) and
only the frames it forwards run stage l_n + 1 onwards. A frame that every module forwards runs
the whole backbone and the MLP (eq. 3.5). Costs are those of `SoFNet` (stages and modules a
frame reached, plus the tail and MLP for a used frame), now also what was computed.

Gradients (the thesis trains with the Gumbel-softmax trick, eq. 3.4, and says nothing more on
stopped frames; this is our reading): forward signals are straight-through Gumbel samples, so
a forwarded frame's signals get the gradient of eq. 3.6 (s_t z_t) and of the efficiency loss
(eq. 3.11). A frame stopped at module k never computes z_t or the stages after l_k, so its
signal g_t^(k) gets the efficiency gradient only, and modules after k have no output for it:
their forward signals count as 0 (as in `SoFNet`), their inner classifiers do not learn from
it (eq. 3.13 already weights by g), and the self-supervision of eq. 3.14-3.15, which compares
inner classifiers n and n + 1, is only trained where module n + 1 ran: elsewhere its gate
logits enter the loss detached (no gradient), keeping eq. 3.15's 1 / (T (N - 1)) scale.
Warm-up forces every signal to forward, so warm-up frames run the whole backbone.

Evaluation uses the encoder's all-stage features and `SoFNet.forward` unchanged: its
decisions, scores and costs equal this module's (tests/test_finetune_sofnet.py), only the
stages a stopped frame would not run are computed anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backbones.staged import global_pool
from trainers.encoder import EndToEnd
from trainers.gumbel import annealed_tau, gumbel_softmax_st, hard_argmax
from trainers.method import Batch, MethodOutput, TrainState
from trainers.recurrence import input_projections


def forward_signal(q: torch.Tensor, mode: str, tau: float) -> torch.Tensor:
    """g in {0, 1} [B] from gate logits q [B, 2] (index 1 = forward), as `SoFNet` decides:
    all forward in warm-up, straight-through Gumbel in joint training, arg-max otherwise."""
    if mode == "forced":
        return q.new_ones(q.shape[0])
    if mode == "gumbel":
        return gumbel_softmax_st(q, tau)[:, 1]
    return hard_argmax(q)[:, 1]


def _scatter(rows: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    """A [size, ...] tensor holding `values` at `rows` and zeros elsewhere (differentiable)."""
    out = values.new_zeros((size, *values.shape[1:]))
    return out.index_copy(0, rows, values)


class StopOrForward(EndToEnd):
    """SoF-Net behind its live backbone: in training, stopped frames skip the later stages.

    `method` is a `trainers.sofnet.SoFNet`; the encoder must hold its view (2D backbone)."""

    def forward(self, clips, targets: torch.Tensor, video_ids: Sequence[str],
                state: TrainState) -> tuple[MethodOutput, Batch]:
        if not (state.training and self.training):
            return super().forward(clips, targets, video_ids, state)
        return self.live_forward(clips, targets, video_ids, state)

    def live_forward(self, clips, targets: torch.Tensor, video_ids: Sequence[str],
                     state: TrainState) -> tuple[MethodOutput, Batch]:
        """SoF-Net's output for a clip batch, running each stage only on forwarded frames
        (no early termination, eq. 3.7: the thesis applies it at inference only).

        The backbone's BatchNorm layers use their running statistics here: a stage sees one
        frame of each still-forwarded video at a time, often a handful of rows (one row of
        a 1x1 map cannot be normalised at all). The loop's precise BN recomputes those
        statistics over whole clips before every validation, so they follow the weights."""
        backbone = self.encoder.backbones[self.method.view]
        norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        modes = [m.training for m in norms]
        for m in norms:
            m.eval()
        try:
            return self._live(clips, targets, video_ids, state)
        finally:
            for m, mode in zip(norms, modes):
                m.train(mode)

    def _live(self, clips, targets: torch.Tensor, video_ids: Sequence[str],
              state: TrainState) -> tuple[MethodOutput, Batch]:
        method, encoder = self.method, self.encoder
        view = method.view
        x_all = encoder.view_input(clips, encoder.views[view].input_size)
        bsz, steps = x_all.shape[:2]
        device = x_all.device
        backbone = encoder.backbones[view]
        grad = torch.is_grad_enabled() and view not in encoder.frozen
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=encoder.bf16)
        module_at = {s: k for k, s in enumerate(method.stages)}
        n = len(method.stages)
        training = state.training and self.training
        mode = ("forced" if state.stage == "warmup" else "gumbel") if training else "argmax"
        tau = annealed_tau(method.cfg.tau0, method.cfg.tau_decay, state.epoch)
        hidden = method.cfg.hidden
        states = [(torch.zeros(bsz, hidden, device=device),
                   torch.zeros(bsz, hidden, device=device)) for _ in range(n)]
        counts = {name: 0 for name in backbone.stage_names}
        frame_logits, gates, h_all, trained_q, codes, costs = [], [], [], [], [], []
        for t in range(steps):
            rows = torch.arange(bsz, device=device)  # frames still forwarded (B videos)
            x = x_all[:, t]
            reach = torch.ones(bsz, device=device)
            news: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # h, c, rows
            g_t, r_t, q_t, h_t, ran = [], [], [], [], []
            for name, stage in backbone.stages():
                if rows.numel() == 0:
                    break
                with torch.set_grad_enabled(grad), amp:
                    x = stage(x)
                counts[name] += rows.numel()
                if name not in module_at:
                    continue
                k = module_at[name]
                pm = method.policies[k]
                proj = input_projections(pm.lstm, pm.fc(global_pool(x).float()).unsqueeze(1))[0]
                h, c, q = pm.step(proj, (states[k][0][rows], states[k][1][rows]))
                g = forward_signal(q, mode, tau)
                r_t.append(reach)
                ran.append(_scatter(rows, torch.ones_like(g), bsz))
                reach = reach * _scatter(rows, g, bsz)
                g_t.append(reach)
                q_t.append(_scatter(rows, q, bsz))
                h_t.append(_scatter(rows, h, bsz))
                news.append((h, c, rows))
                keep = g.detach() > 0.5
                rows, x = rows[keep], x[keep]
            for _ in range(n - len(r_t)):  # modules no frame of this step reached
                zero = torch.zeros(bsz, device=device)
                r_t.append(zero)
                ran.append(zero)
                g_t.append(zero)
                q_t.append(torch.zeros(bsz, 2, device=device))
                h_t.append(torch.zeros(bsz, hidden, device=device))
            # frames every module forwarded ran the whole backbone: x is its last stage's
            # output for them; their logits z_t (eq. 3.5), zeros for stopped frames
            used = rows
            z = torch.zeros(bsz, method.mlp[-1].out_features, device=device)
            if used.numel():
                z = _scatter(used, method.mlp(global_pool(x).float()), bsz)
            used_mask = torch.zeros(bsz, dtype=torch.bool, device=device)
            used_mask[used] = True
            for k, (h, c, k_rows) in enumerate(news):  # eq. 3.2: advance on used frames only
                h_full = states[k][0].index_copy(0, k_rows, h)
                c_full = states[k][1].index_copy(0, k_rows, c)
                states[k] = (torch.where(used_mask[:, None], h_full, states[k][0]),
                             torch.where(used_mask[:, None], c_full, states[k][1]))
            frame_logits.append(z)
            gates.append(torch.stack(g_t, dim=1))
            r_stack = torch.stack(r_t, dim=1).detach()
            ran_t = torch.stack(ran, dim=1)
            q_stack = torch.stack(q_t, dim=1)
            # eq. 3.15 only where module n + 1 ran for this frame (see the module doc)
            has_label = torch.cat([ran_t[:, 1:], torch.zeros_like(ran_t[:, :1])], 1) > 0
            trained_q.append(torch.where(has_label[:, :, None], q_stack, q_stack.detach()))
            h_all.append(torch.stack(h_t, dim=1))
            stop_at = gates[-1].detach().sum(dim=1).long()
            codes.append(stop_at)
            cost = (r_stack.to(torch.float64) * method.reach_gmacs).sum(dim=1)
            costs.append(cost + used_mask.to(torch.float64) * method.tail_gmacs)
        mask = torch.ones(bsz, steps, dtype=torch.bool, device=device)
        batch = Batch({}, torch.full((bsz,), steps, dtype=torch.int64, device=device), mask,
                      targets.to(device), list(video_ids), {})
        gate_t = torch.stack(gates, dim=1)  # [B, T, N]
        s = gate_t[:, :, -1]  # s_t = prod_n g_t^(n) (reach after the last module)
        count = s.sum(dim=1)
        total = (s[:, :, None] * torch.stack(frame_logits, dim=1)).sum(dim=1)
        logits = total / (count + (count.detach() == 0).to(count.dtype))[:, None]  # eq. 3.6
        codes_t = torch.stack(codes, dim=1)
        hidden_t = torch.stack(h_all, dim=1)  # [B, T, N, H]
        inner = torch.stack([pm.inner(hidden_t[:, :, k]) for k, pm in
                             enumerate(method.policies)], 2)
        out = MethodOutput(
            logits=logits,
            gflops=torch.stack(costs, dim=1).sum(dim=1),
            frames_used={view: (codes_t == n).sum(dim=1)},
            decisions=codes_t,
            decision_names=dict(method.decision_names),
            extras={"gates": gate_t, "gate_logits": torch.stack(trained_q, dim=1),
                    "inner_logits": inner, "frames_full": (codes_t == n).sum(dim=1),
                    "stage_frames": counts},  # frames each backbone stage ran
        )
        return out, batch

