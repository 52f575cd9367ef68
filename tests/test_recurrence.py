"""The split recurrences (trainers/recurrence.py) compute what the stepped torch cells compute,
and LiteEval's one-pass formulation gives the same outputs and gradients as stepping
nn.LSTMCell/nn.GRUCell on `x[:, t]` (the formulation it replaced, kept here as the reference)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers import liteeval
from trainers.data import StoreInfo, ViewInfo
from trainers.method import Batch, TrainState
from trainers.recurrence import cell_step, input_projections, lstm_states


@pytest.mark.parametrize("kind", [nn.LSTMCell, nn.GRUCell])
def test_cell_step_equals_the_torch_cell(kind):
    torch.manual_seed(0)
    cell = kind(5, 7)
    x = torch.randn(3, 4, 5)
    lstm = kind is nn.LSTMCell
    state = [torch.randn(3, 7), torch.randn(3, 7)] if lstm else [torch.randn(3, 7)]
    ref = list(state)
    for t, proj in enumerate(input_projections(cell, x)):
        state = cell_step(cell, proj, state)
        ref = list(cell(x[:, t], tuple(ref))) if lstm else [cell(x[:, t], ref[0])]
        for a, b in zip(state, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lstm_states_equal_stepping_a_cell_with_the_same_weights():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 6, batch_first=True)
    cell = nn.LSTMCell(5, 6)
    cell.load_state_dict({k[:-3]: v for k, v in lstm.state_dict().items()})
    x = torch.randn(2, 9, 5)
    h_seq, c_seq = lstm_states(lstm, x)
    h, c = torch.zeros(2, 6), torch.zeros(2, 6)
    for t in range(9):
        h, c = cell(x[:, t], (h, c))
        torch.testing.assert_close(h_seq[:, t], h, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c_seq[:, t], c, rtol=1e-5, atol=1e-6)


def reference_forward(model: liteeval.LiteEval, batch: Batch, state: TrainState):
    """LiteEval's eq. 1-6 stepped frame by frame with the torch cells (the old formulation)."""
    cfg = model.cfg
    vc, vf = batch.features["coarse"], batch.features["fine"]
    bsz, steps, _ = vc.shape
    coarse_seq = model._coarse_states(vc)
    lstm = cfg.cell == "lstm"
    zeros = vc.new_zeros(bsz, cfg.fine_hidden)
    fine = [zeros, zeros.clone()] if lstm else [zeros]
    gates = []
    for t in range(steps):
        valid = batch.mask[:, t].unsqueeze(1)
        gate_logits = model.gate(torch.cat([vc[:, t], fine[0]], dim=1))
        b, _ = model._decide(gate_logits, state)
        x = torch.cat([vc[:, t], vf[:, t]], dim=1)
        new = list(model.fine_rnn(x, tuple(fine))) if lstm else [model.fine_rnn(x, fine[0])]
        skipped = [torch.cat([h[:, t], f[:, cfg.coarse_hidden:]], dim=1)
                   for h, f in zip(coarse_seq, fine)]
        mixed = [b[:, None] * n + (1 - b[:, None]) * s for n, s in zip(new, skipped)]
        fine = [torch.where(valid, m, o) for m, o in zip(mixed, fine)]
        gates.append(b * batch.mask[:, t])
    return model.classifier(fine[0]), torch.stack(gates, dim=1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("training", [True, False])
def test_liteeval_one_pass_equals_the_stepped_formulation(cell, training):
    info = StoreInfo(views={"coarse": ViewInfo("coarse", 6, "mobilenet_v2", 112, 0.1, {}, {}),
                            "fine": ViewInfo("fine", 8, "resnet101", 224, 8.0, {}, {})},
                     classes=["a", "b", "c"], num_classes=3)
    torch.manual_seed(0)
    model = liteeval.build(liteeval.Config(cell=cell, coarse_hidden=4, fine_hidden=10, readout="last",
                                           baseline_head=False), info)
    lengths = torch.tensor([7, 3, 5])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    feats = {"coarse": torch.randn(3, 7, 6) * mask[..., None],
             "fine": torch.randn(3, 7, 8) * mask[..., None]}
    batch = Batch(feats, lengths, mask, torch.eye(3), ["x", "y", "z"])
    state = TrainState(epoch=1, training=training)
    model.train(training)
    results = []
    for run in (lambda: model(batch, state), lambda: reference_forward(model, batch, state)):
        torch.manual_seed(1)  # the same Gumbel noise for both
        model.zero_grad()
        out = run()
        logits, gates = (out.logits, out.extras["fine_fraction"]) if not isinstance(
            out, tuple) else (out[0], out[1].sum(1) / lengths)
        (logits.square().sum() + gates.sum()).backward()
        results.append((logits.detach(), gates.detach(),
                        [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                         for p in model.parameters()]))
    (lo_new, g_new, grads_new), (lo_ref, g_ref, grads_ref) = results
    torch.testing.assert_close(lo_new, lo_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_new, g_ref)
    for a, b in zip(grads_new, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
