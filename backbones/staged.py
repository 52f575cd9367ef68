"""What every backbone shares: named stages, pooled features, logits.

Each family lists its stages as (name, module) pairs built from its own submodules, so
parameter names stay torchvision's while `forward_stages`, FLOPs per stage and stage
widths are computed one way for all families.
"""

from __future__ import annotations

from torch import Tensor, nn


def global_pool(x: Tensor) -> Tensor:
    """Average over every axis after channels: [N, C, *spatial] -> [N, C]."""
    return x.flatten(2).mean(dim=2)


class StagedBackbone(nn.Module):
    """Base class: subclasses define `stages()`, `head` and `feature_dim`."""

    feature_dim: int

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Ordered (name, module); running them in turn then pooling gives the features."""
        raise TypeError(f"{type(self).__name__} must define stages()")

    @property
    def head(self) -> nn.Module:
        """Module mapping pooled features [N, D] to logits."""
        raise TypeError(f"{type(self).__name__} must define head")

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _ in self.stages()]

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features [N, D] after the last stage."""
        for _, stage in self.stages():
            x = stage(x)
        return global_pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))

    def forward_stages(self, x: Tensor) -> dict[str, Tensor]:
        """Pooled output [N, C_s] after each stage, plus 'features' and 'logits'.

        One pass: the last stage's pooled output is the same tensor as 'features'.
        """
        out: dict[str, Tensor] = {}
        for name, stage in self.stages():
            x = stage(x)
            out[name] = global_pool(x)
        out["features"] = out[name]
        out["logits"] = self.head(out["features"])
        return out


def slice_stages(features: nn.Sequential, stage_ends: dict[str, int]) -> list[tuple[str, nn.Module]]:
    """Split a torchvision-style `features` Sequential into named stages at the given end
    indices (MobileNetV2 and EfficientNet keep their blocks in one Sequential, so their stages
    are slices of it and parameter names stay torchvision's)."""
    out, start = [], 0
    for name, end in stage_ends.items():
        out.append((name, features[start:end]))
        start = end
    return out
