"""Temporal shift (TSM) as a ResNet option, and bf16 autocast of the encoder."""

from __future__ import annotations

import torch

from backbones import build_backbone
from backbones.tsm import add_temporal_shift, temporal_shift


def test_temporal_shift_moves_an_eighth_of_channels_each_way():
    x = torch.arange(2 * 3 * 16, dtype=torch.float32).view(6, 16, 1, 1)  # 2 clips of 3 frames
    y = temporal_shift(x, 3).view(2, 3, 16)
    x = x.view(2, 3, 16)
    assert torch.equal(y[:, :2, :2], x[:, 1:, :2]) and not y[:, 2, :2].any()
    assert torch.equal(y[:, 1:, 2:4], x[:, :2, 2:4]) and not y[:, 0, 2:4].any()
    assert torch.equal(y[:, :, 4:], x[:, :, 4:])


def test_tsm_resnet_keeps_names_and_mixes_frames_of_a_clip_only():
    torch.manual_seed(0)
    model = build_backbone("resnet18").eval()
    keys = list(model.state_dict())
    x = torch.randn(4, 3, 32, 32)  # 2 clips of 2 frames
    plain = model.forward_features(x)
    handles = add_temporal_shift(model, frames=2)
    assert len(handles) == 8 and list(model.state_dict()) == keys
    shifted = model.forward_features(x)
    x2 = x.clone()
    x2[1] += 1.0  # change frame 1 of clip 0
    out = model.forward_features(x2)
    assert not torch.allclose(out[0], shifted[0])  # frame 0 now sees frame 1
    assert torch.allclose(out[2:], shifted[2:])  # the other clip is untouched
    for h in handles:
        h.remove()
    assert torch.allclose(model.forward_features(x), plain)


def test_bf16_encoder_hands_the_method_float32_features():
    from pipeline.extract import parse_view
    from trainers.encoder import ClipEncoder

    views = [parse_view("a=resnet18@32")]
    clips = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        full = ClipEncoder(views, with_stages=True).eval()(clips, torch.ones(1, 2), ["v"])
        half = ClipEncoder(views, with_stages=True, bf16=True).eval()(clips, torch.ones(1, 2),
                                                                      ["v"])
    assert half.features["a"].dtype == half.stages["a"]["res3"].dtype == torch.float32
    assert not torch.equal(half.features["a"], full.features["a"])  # it did run in bf16
    torch.testing.assert_close(half.features["a"], full.features["a"], rtol=0.05, atol=0.05)
