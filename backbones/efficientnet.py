"""EfficientNet-B0 (Tan & Le 2019) with torchvision's parameter names.

`features.0` stem, `features.1..7` the seven MBConv stages of the paper's Table 1,
`features.8` the 1x1 conv to 1280, `classifier.1` the linear layer. Inside a block,
`block.N` is expand (if any), depthwise, squeeze-excitation (`fc1`/`fc2`), projection.
Stages group `features` by output stride:

    stage1 = features.0-1  (stride 2,  16 ch)
    stage2 = features.2    (stride 4,  24 ch)
    stage3 = features.3    (stride 8,  40 ch)
    stage4 = features.4-5  (stride 16, 112 ch)
    stage5 = features.6-8  (stride 32, 1280 ch, i.e. the pooled feature)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from backbones.staged import StagedBackbone, slice_stages

# expand ratio, kernel, stride, in channels, out channels, repeats: B0 of the paper's Table 1.
B0_SETTING = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]
STAGE_ENDS = {"stage1": 2, "stage2": 3, "stage3": 4, "stage4": 6, "stage5": 9}


class ConvBNAct(nn.Sequential):
    """conv (.0), batch norm (.1), optional SiLU (.2): torchvision's Conv2dNormActivation."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gates from a pooled descriptor (Hu et al. 2018), 1x1 convs fc1/fc2."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        scale = torch.sigmoid(self.fc2(self.activation(self.fc1(scale))))
        return x * scale


class MBConv(nn.Module):
    """Inverted residual with squeeze-excitation; stochastic depth on the residual branch."""

    def __init__(self, expand_ratio: int, kernel: int, stride: int, in_ch: int, out_ch: int,
                 drop_prob: float) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_ch == out_ch
        self.drop_prob = drop_prob
        expanded = in_ch * expand_ratio
        layers: list[nn.Module] = []
        if expanded != in_ch:
            layers.append(ConvBNAct(in_ch, expanded, kernel_size=1))
        layers += [
            ConvBNAct(expanded, expanded, kernel, stride, groups=expanded),
            SqueezeExcitation(expanded, max(1, in_ch // 4)),
            ConvBNAct(expanded, out_ch, kernel_size=1, act=False),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if not self.use_res_connect:
            return out
        if self.training and self.drop_prob > 0:
            keep = 1.0 - self.drop_prob
            mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)
            out = out * mask.bernoulli_(keep) / keep
        return x + out


class EfficientNet(StagedBackbone):
    def __init__(self, setting: list[tuple[int, int, int, int, int, int]],
                 num_classes: int = 1000, dropout: float = 0.2,
                 stochastic_depth_prob: float = 0.2) -> None:
        super().__init__()
        total_blocks = sum(s[-1] for s in setting)
        features: list[nn.Module] = [ConvBNAct(3, setting[0][3], stride=2)]
        block_id = 0
        for expand, kernel, stride, in_ch, out_ch, repeats in setting:
            stage = []
            for i in range(repeats):
                drop = stochastic_depth_prob * block_id / total_blocks
                stage.append(MBConv(expand, kernel, stride if i == 0 else 1,
                                    in_ch if i == 0 else out_ch, out_ch, drop))
                block_id += 1
            features.append(nn.Sequential(*stage))
        last_in = setting[-1][4]
        self.feature_dim = 4 * last_in
        features.append(ConvBNAct(last_in, self.feature_dim, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(self.feature_dim, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.out_features ** 0.5
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return slice_stages(self.features, STAGE_ENDS)

    @property
    def head(self) -> nn.Module:
        return self.classifier


def efficientnet_b0(num_classes: int = 1000) -> EfficientNet:
    return EfficientNet(B0_SETTING, num_classes)
