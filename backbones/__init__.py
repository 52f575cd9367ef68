"""Image and clip backbones in plain PyTorch, with torchvision parameter names.

`build_backbone(name)` builds one (random init unless `weights=` a local checkpoint),
`load_weights` loads a torchvision-layout state dict strictly and returns its sha256, and
`backbones.flops.view_cost` measures multiply-adds and parameters per stage.
"""

from backbones.build import BACKBONES, BUILDERS, CLIP_BACKBONES, build_backbone, feature_dim
from backbones.staged import StagedBackbone
from backbones.weights import WeightsError, load_weights

__all__ = [
    "BACKBONES",
    "BUILDERS",
    "CLIP_BACKBONES",
    "StagedBackbone",
    "WeightsError",
    "build_backbone",
    "feature_dim",
    "load_weights",
]
