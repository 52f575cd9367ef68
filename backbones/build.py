"""Build a backbone by name: a plain dict of builder functions, no registry machinery."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from backbones.calibrate import calibrate_batchnorm
from backbones.efficientnet import efficientnet_b0
from backbones.mfnet import mfnet2d, mfnet3d
from backbones.mobilenet_v2 import mobilenet_v2
from backbones.resnet import resnet18, resnet34, resnet50, resnet101
from backbones.staged import StagedBackbone
from backbones.weights import load_weights

log = logging.getLogger(__name__)

BUILDERS: dict[str, Callable[[int], StagedBackbone]] = {
    "mobilenet_v2": mobilenet_v2,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "efficientnet_b0": efficientnet_b0,
    "mfnet2d": mfnet2d,
    "mfnet3d": mfnet3d,
}
BACKBONES: tuple[str, ...] = tuple(BUILDERS)
# Backbones that take clips [N, 3, T, H, W]; all others take images [N, 3, H, W].
CLIP_BACKBONES = frozenset({"mfnet3d"})


def _builder(name: str) -> Callable[[int], StagedBackbone]:
    if name not in BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BUILDERS[name]


def build_backbone(
    name: str, num_classes: int = 1000, weights: str | Path | None = None
) -> StagedBackbone:
    """Build `name`; load a local torchvision-layout checkpoint if `weights` is given.

    Without weights the model is randomly initialised, which is fine for tests and FLOPs
    but makes features meaningless, so it is logged as a warning every time; its BatchNorm
    statistics are calibrated on seeded noise (backbones/calibrate.py) so that features stay
    within float16 range. The sha256 of
    loaded weights is kept on the model as `weights_sha256` (None for random init).
    """
    model = _builder(name)(num_classes)
    model.weights_sha256 = None
    if weights is None:
        log.warning("backbone %s built with RANDOM weights (no --weights given): features "
                    "are not meaningful for recognition", name)
        calibrate_batchnorm(model, clip=name in CLIP_BACKBONES)
    else:
        model.weights_sha256 = load_weights(model, weights)
    return model


def feature_dim(name: str) -> int:
    """Width D of `forward_features` for `name`, read from a model built on the meta device."""
    with torch.device("meta"):
        return _builder(name)(1000).feature_dim
