"""Backbones: torchvision parameter layout, strict weight loading, stage outputs.

All models are randomly initialised (no pretrained weights exist on this machine); numeric
checks use tiny inputs on CPU, layout checks build on the meta device.
"""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch

from backbones import (
    BACKBONES,
    CLIP_BACKBONES,
    WeightsError,
    build_backbone,
    feature_dim,
    load_weights,
)


def _meta(name: str, num_classes: int = 1000):
    with torch.device("meta"):
        return build_backbone(name, num_classes)


def _small_input(name: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 3, 4, 32, 32) if name in CLIP_BACKBONES else (2, 3, 32, 32)
    return torch.randn(shape, generator=gen)


def _trained_stats(name: str, seed: int) -> torch.nn.Module:
    """A model whose BN running stats moved away from init, so a lost buffer shows."""
    torch.manual_seed(seed)
    model = build_backbone(name, num_classes=10)
    model.train()
    with torch.no_grad():
        model(_small_input(name, seed=seed))
    return model.eval()


# Key names and counts as torchvision's models have them (torchvision 0.2x state dicts).
TORCHVISION_KEYS = {
    "resnet18": ["conv1.weight", "bn1.running_mean", "layer2.0.downsample.0.weight",
                 "layer4.1.bn2.num_batches_tracked", "fc.weight", "fc.bias"],
    "resnet50": ["layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
                 "layer3.5.conv3.weight", "layer4.2.bn3.bias", "fc.weight"],
    "resnet101": ["layer3.22.conv2.weight", "layer4.0.downsample.1.weight"],
    "mobilenet_v2": ["features.0.0.weight", "features.0.1.running_mean",
                     "features.1.conv.0.0.weight", "features.1.conv.1.weight",
                     "features.1.conv.2.running_var", "features.2.conv.0.0.weight",
                     "features.17.conv.3.weight", "features.18.0.weight",
                     "features.18.1.bias", "classifier.1.weight", "classifier.1.bias"],
    "efficientnet_b0": ["features.0.0.weight", "features.1.0.block.0.0.weight",
                        "features.1.0.block.1.fc1.weight", "features.1.0.block.2.1.running_mean",
                        "features.2.0.block.0.0.weight", "features.2.1.block.2.fc2.bias",
                        "features.6.3.block.3.1.weight", "features.8.0.weight",
                        "classifier.1.weight"],
}
# (state dict entries, parameters) of torchvision's builders with 1000 classes.
TORCHVISION_SIZES = {
    "resnet18": (122, 11_689_512),
    "resnet34": (218, 21_797_672),
    "resnet50": (320, 25_557_032),
    "resnet101": (626, 44_549_160),
    "mobilenet_v2": (314, 3_504_872),
    "efficientnet_b0": (360, 5_288_548),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_parameter_names_follow_torchvision(name):
    keys = _meta(name).state_dict().keys()
    missing = [k for k in TORCHVISION_KEYS[name] if k not in keys]
    assert not missing, f"{name} lacks torchvision keys {missing}"


def test_resnet18_has_no_downsample_in_layer1():
    keys = _meta("resnet18").state_dict().keys()
    assert not any(k.startswith("layer1.0.downsample") for k in keys)


@pytest.mark.parametrize("name", sorted(TORCHVISION_SIZES))
def test_state_dict_size_matches_torchvision(name):
    model = _meta(name)
    entries, params = TORCHVISION_SIZES[name]
    assert len(model.state_dict()) == entries
    assert sum(p.numel() for p in model.parameters()) == params


def test_random_init_is_logged_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="backbones.build"):
        model = _meta("resnet18")
    assert model.weights_sha256 is None
    assert any("resnet18" in r.getMessage() and "RANDOM" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("resnet51")


# One per family (ResNet-34/50/101 share resnet.py with ResNet-18; their layouts are checked
# on the meta device above), to keep checkpoint files small.
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0", "mfnet3d"])
def test_state_dict_round_trips_through_a_file(name, tmp_path):
    source = _trained_stats(name, seed=1)
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_backbone(name, num_classes=10, weights=path).eval()
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = _small_input(name, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_load_weights_accepts_wrapped_checkpoints(tmp_path):
    source = _trained_stats("resnet18", seed=4)
    path = tmp_path / "wrapped.pth"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    target = build_backbone("resnet18", num_classes=10)
    sha = load_weights(target, path)
    assert len(sha) == 64
    torch.testing.assert_close(target.fc.weight, source.fc.weight)


def test_missing_key_is_named(tmp_path):
    state = build_backbone("mobilenet_v2").state_dict()
    del state["features.5.conv.1.1.running_var"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError,
                       match=r"missing keys \(1\): features\.5\.conv\.1\.1\.running_var"):
        build_backbone("mobilenet_v2", weights=path)


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
    path = tmp_path / "ten_classes.pth"
    torch.save(build_backbone("resnet18", num_classes=10).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        build_backbone("resnet18", num_classes=1000, weights=path)
    message = str(info.value)
    assert "fc.weight: model [1000, 512], file [10, 512]" in message
    assert "fc.bias" in message
    assert info.value.mismatched[0][0] in ("fc.weight", "fc.bias")


def test_unexpected_key_is_named(tmp_path):
    state = build_backbone("mobilenet_v2").state_dict()
    state["features.19.0.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): features\.19\.0\.weight"):
        build_backbone("mobilenet_v2", weights=path)


def test_non_state_dict_file_is_rejected_clearly(tmp_path):
    path = tmp_path / "not_weights.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(WeightsError, match="not a state dict"):
        build_backbone("resnet18", weights=path)


# ResNet-34/101 share every code path with ResNet-18/50.
@pytest.mark.parametrize("name", [n for n in BACKBONES if n not in ("resnet34", "resnet101")])
def test_forward_stages_agree_with_forward(name):
    model = _trained_stats(name, seed=5)
    x = _small_input(name, seed=6)
    with torch.no_grad():
        stages = model.forward_stages(x)
        features = model.forward_features(x)
        logits = model(x)
    assert list(stages) == [*model.stage_names, "features", "logits"]
    assert len(model.stage_names) == 5
    torch.testing.assert_close(stages[model.stage_names[-1]], features)
    torch.testing.assert_close(stages["features"], features)
    torch.testing.assert_close(stages["logits"], logits)
    assert features.shape == (2, feature_dim(name)) == (2, model.feature_dim)
    assert logits.shape == (2, 10)
    for stage in model.stage_names:
        assert stages[stage].ndim == 2 and stages[stage].shape[0] == 2


def test_resnet_stage_names_are_res1_to_res5():
    assert _meta("resnet50").stage_names == ["res1", "res2", "res3", "res4", "res5"]


def test_mfnet3d_keeps_time_until_pooling():
    """Table 2: conv1 keeps 16 frames, conv2 halves them to 8, spatial /32 at conv5."""
    model = _meta("mfnet3d", 400)
    x = torch.empty(1, 3, 16, 224, 224, device="meta")
    shapes = {}
    for name, stage in model.stages():
        x = stage(x)
        shapes[name] = tuple(x.shape[2:])
    assert shapes == {"conv1": (16, 56, 56), "conv2": (8, 56, 56), "conv3": (8, 28, 28),
                      "conv4": (8, 14, 14), "conv5": (8, 7, 7)}


def test_mfnet_fibers_are_grouped_convolutions():
    model = _meta("mfnet2d")
    unit = model.conv3.B02
    assert unit.conv_m1.conv.groups == 16 and unit.conv_m2.conv.groups == 16
    assert unit.conv_i1.conv.out_channels == 192 // 4  # multiplexer squeezes by 4
