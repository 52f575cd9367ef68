"""MobileNetV2 (Sandler et al. 2018) with torchvision's parameter names.

`features.0` is the stem, `features.1..17` the inverted residual blocks, `features.18` the
1x1 conv to 1280 channels, `classifier.1` the linear layer. Stages group `features` by
output stride, so each stage ends where the resolution next halves:

    stage1 = features.0-1   (stride 2,  16 ch)
    stage2 = features.2-3   (stride 4,  24 ch)
    stage3 = features.4-6   (stride 8,  32 ch)
    stage4 = features.7-13  (stride 16, 96 ch)
    stage5 = features.14-18 (stride 32, 1280 ch, i.e. the pooled feature)
"""

from __future__ import annotations

from torch import Tensor, nn

from backbones.staged import StagedBackbone, slice_stages

# t (expansion), c (output channels), n (repeats), s (stride of the first repeat):
# Table 2 of the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
STAGE_ENDS = {"stage1": 2, "stage2": 4, "stage3": 7, "stage4": 14, "stage5": 19}


class ConvBNReLU6(nn.Sequential):
    """conv (.0), batch norm (.1), ReLU6 (.2): torchvision's Conv2dNormActivation layout."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(StagedBackbone):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        input_channel, last_channel = 32, 1280
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, t))
                input_channel = c
        features.append(ConvBNReLU6(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.feature_dim = last_channel
        self.classifier = nn.Sequential(nn.Dropout(p=dropout),
                                        nn.Linear(last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return slice_stages(self.features, STAGE_ENDS)

    @property
    def head(self) -> nn.Module:
        return self.classifier


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(num_classes)
