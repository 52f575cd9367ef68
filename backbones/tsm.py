"""Temporal Shift Module (Lin et al., TSM, ICCV 2019) as an option of the ResNet backbones.

C2F's published pathways are TSM-ResNet50 (C2F §4). TSM moves 1/8 of the channels one frame
back in time and 1/8 one frame forward (zeros at the clip ends) before the first convolution
of every residual block ("residual shift": the identity path is not shifted), which gives a
2D network temporal reasoning at zero FLOPs and zero parameters.

`add_temporal_shift` installs the shift as forward pre-hooks on each block's `conv1`, so the
parameter names stay torchvision's: a TSM model loads and exports the same checkpoints as the
plain ResNet. Inputs are frames of whole clips, [B*T, C, H, W] with the T frames of a clip
consecutive (how trainers/encoder.py flattens [B, T, ...]).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from backbones.resnet import BasicBlock, Bottleneck


def temporal_shift(x: torch.Tensor, frames: int, fold_div: int = 8) -> torch.Tensor:
    """[B*T, C, H, W] -> same shape, channels [0, C/fold_div) taken from the next frame,
    [C/fold_div, 2C/fold_div) from the previous frame, zeros where there is none."""
    nt, c = x.shape[:2]
    if nt % frames:
        raise ValueError(f"{nt} frames is not a whole number of {frames}-frame clips")
    x = x.view(nt // frames, frames, c, *x.shape[2:])
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left: frame t sees t+1
    out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]  # shift right: frame t sees t-1
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return out.view(nt, c, *x.shape[3:])


def add_temporal_shift(model: nn.Module, frames: int, fold_div: int = 8) -> list[RemovableHandle]:
    """Shift the input of every residual block's first convolution; returns the hook handles
    (`handle.remove()` turns the model back into the plain ResNet)."""
    if frames < 1 or fold_div < 2:
        raise ValueError(f"need frames >= 1 and fold_div >= 2, got {frames}, {fold_div}")

    def hook(_module: nn.Module, args: tuple) -> tuple:
        return (temporal_shift(args[0], frames, fold_div),)

    handles = [block.conv1.register_forward_pre_hook(hook) for block in model.modules()
               if isinstance(block, (BasicBlock, Bottleneck))]
    if not handles:
        raise ValueError(f"{type(model).__name__} has no residual blocks to shift")
    return handles
