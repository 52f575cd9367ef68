"""Recurrent cells split into the part that sees the whole sequence and the part that must step.

Why: LiteEval, AR-Net and SoF-Net decide per frame, so their RNNs cannot run as one fused
`nn.LSTM` call. Stepping an `nn.LSTMCell` on `x[:, t]` costs twice: the input projection
W_ih x_t runs T times as small matmuls, and every `x[:, t]` of a [B, T, D] tensor makes autograd
zero-fill a full [B, T, D] gradient in the backward pass, so a training step costs O(T^2).
Here the input projection runs once as one matmul over [B, T, D], the sequence is split with
`unbind(1)` (one backward stack instead of T zero-filled copies), and only h_{t-1} W_hh plus the
gate nonlinearities run per step. The cells keep the parameters of `nn.LSTMCell`/`nn.GRUCell`
(same names, same maths), so checkpoints and results are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def input_projections(cell: nn.LSTMCell | nn.GRUCell, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """W_ih x_t + b_ih for every step of x [B, T, D], as a tuple of T tensors [B, G*H]."""
    proj = torch.matmul(x, cell.weight_ih.t())
    if cell.bias_ih is not None:
        proj = proj + cell.bias_ih
    return proj.unbind(1)


def cell_step(
    cell: nn.LSTMCell | nn.GRUCell, x_proj: torch.Tensor, state: list[torch.Tensor]
) -> list[torch.Tensor]:
    """One step of `cell` from its precomputed input projection; state is [h] or [h, c].

    Same equations as torch's LSTMCell (gates i, f, g, o) and GRUCell (gates r, z, n).
    """
    h = state[0]
    rec = torch.matmul(h, cell.weight_hh.t())
    if cell.bias_hh is not None:
        rec = rec + cell.bias_hh
    if isinstance(cell, nn.LSTMCell):
        # chunk (one backward concatenation) rather than slices (one zero-filled gradient each)
        i, f, g, o = (x_proj + rec).chunk(4, dim=1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return [torch.sigmoid(o) * torch.tanh(c), c]
    x_r, x_z, x_n = x_proj.chunk(3, dim=1)
    h_r, h_z, h_n = rec.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return [n + z * (h - n)]


def lstm_states(lstm: nn.LSTM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All hidden and cell states [B, T, H] of a one-layer, batch-first nn.LSTM over x [B, T, D].

    nn.LSTM returns only the last cell state; LiteEval's eq. 5 copies c^c_t at every step, so the
    cell states are rebuilt from the gates (one matmul for all steps, then the cheap
    elementwise recurrence c_t = f_t c_{t-1} + i_t g_t).
    """
    h_seq, _ = lstm(x)
    hidden = lstm.hidden_size
    h_prev = torch.cat([h_seq.new_zeros(h_seq.shape[0], 1, hidden), h_seq[:, :-1]], dim=1)
    gates = torch.matmul(x, lstm.weight_ih_l0.t()) + torch.matmul(h_prev, lstm.weight_hh_l0.t())
    gates = gates + (lstm.bias_ih_l0 + lstm.bias_hh_l0)
    i = torch.sigmoid(gates[..., :hidden])
    f = torch.sigmoid(gates[..., hidden : 2 * hidden])
    g = torch.tanh(gates[..., 2 * hidden : 3 * hidden])
    ig = i * g
    c = h_seq.new_zeros(h_seq.shape[0], hidden)
    cells = []
    for f_t, ig_t in zip(f.unbind(1), ig.unbind(1)):
        c = f_t * c + ig_t
        cells.append(c)
    return h_seq, torch.stack(cells, dim=1)
