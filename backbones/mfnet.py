"""Multi-Fiber Networks, 2D and 3D (Chen et al., ECCV 2018), Table 2.

A multi-fiber unit slices a residual unit into N=16 parallel fibers (grouped convolutions)
and prepends a multiplexer: two 1x1 convolutions (width/4 then back) that route
information across fibers, added residually. Every layer is BN -> ReLU -> conv
(pre-activation). The 3D network "inflates" the 2D one: only the first 3x3 conv of a
unit spans time (3x3x3); the temporal stride 2 sits in the first unit of conv2.

Stages are the paper's layers: conv1 (with its max pool), conv2..conv5 (conv5 ends with the
final BN/ReLU so its pooled output is the feature). Parameter names follow the model
definition of the authors' PyTorch release (conv1.conv, conv2.B01.conv_i1.bn, ..., tail.bn,
classifier); loading one of their checkpoint files has not been tried here.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from backbones.staged import StagedBackbone

FIBERS = 16
CONV1_CHANNELS = 16
# Table 2: layer, repeats (first unit + the rest), channels, stride of the first unit as
# (2D: height, width) and (3D: time, height, width). Later units have stride 1.
MFNET_SPEC = [
    ("conv2", 1 + 2, 96, (1, 1), (2, 1, 1)),
    ("conv3", 1 + 3, 192, (2, 2), (1, 2, 2)),
    ("conv4", 1 + 5, 384, (2, 2), (1, 2, 2)),
    ("conv5", 1 + 2, 768, (2, 2), (1, 2, 2)),
]


def _kernel(k: int, kt: int, dims: int) -> tuple[int, ...]:
    return (k, k) if dims == 2 else (kt, k, k)


class BNReLUConv(nn.Sequential):
    """Pre-activation conv: bn, relu, conv."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, kernel: tuple[int, ...],
                 stride: tuple[int, ...] | int = 1, groups: int = 1) -> None:
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        padding = tuple(k // 2 for k in kernel)
        super().__init__(OrderedDict([
            ("bn", bn(in_ch)),
            ("relu", nn.ReLU(inplace=True)),
            ("conv", conv(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False)),
        ]))


class MultiFiberUnit(nn.Module):
    """Multiplexer (conv_i1, conv_i2) then N fibers (conv_m1, conv_m2) plus a shortcut.

    The first unit of a layer changes width and/or stride; its shortcut is a strided 1x1
    projection (conv_w1) and its second fiber conv is a 1x1 that mixes the widened
    channels, as in the authors' release.
    """

    def __init__(self, dims: int, in_ch: int, mid_ch: int, out_ch: int,
                 stride: tuple[int, ...], first: bool, fibers: int = FIBERS,
                 multiplexer: bool = True) -> None:
        super().__init__()
        self.conv_i1 = self.conv_i2 = None
        if multiplexer:
            mux_ch = mid_ch // 4
            self.conv_i1 = BNReLUConv(dims, in_ch, mux_ch, _kernel(1, 1, dims))
            self.conv_i2 = BNReLUConv(dims, mux_ch, in_ch, _kernel(1, 1, dims))
        self.conv_m1 = BNReLUConv(dims, in_ch, mid_ch, _kernel(3, 3, dims), stride, fibers)
        if first:
            self.conv_m2 = BNReLUConv(dims, mid_ch, out_ch, _kernel(1, 1, dims))
            self.conv_w1 = BNReLUConv(dims, in_ch, out_ch, _kernel(1, 1, dims), stride)
        else:
            self.conv_m2 = BNReLUConv(dims, mid_ch, out_ch, _kernel(3, 1, dims), 1, fibers)
            self.conv_w1 = None

    def forward(self, x: Tensor) -> Tensor:
        routed = x if self.conv_i1 is None else x + self.conv_i2(self.conv_i1(x))
        out = self.conv_m2(self.conv_m1(routed))
        shortcut = x if self.conv_w1 is None else self.conv_w1(x)
        return out + shortcut


class MFNet(StagedBackbone):
    """conv1 + max pool, four layers of multi-fiber units, BN/ReLU tail, pool, classifier."""

    def __init__(self, dims: int, num_classes: int = 1000, fibers: int = FIBERS,
                 multiplexer: bool = True) -> None:
        """`multiplexer=False` gives Table 1's ablation "MF-Net (N=16, w/o multiplexer)"."""
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"MFNet dims must be 2 or 3, got {dims}")
        self.dims = dims
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        stem_stride = (2, 2) if dims == 2 else (1, 2, 2)
        stem_kernel = _kernel(5, 3, dims)
        self.conv1 = nn.Sequential(OrderedDict([
            ("conv", conv(3, CONV1_CHANNELS, stem_kernel, stem_stride,
                          tuple(k // 2 for k in stem_kernel), bias=False)),
            ("bn", bn(CONV1_CHANNELS)),
            ("relu", nn.ReLU(inplace=True)),
        ]))
        self.maxpool = pool(_kernel(3, 1, dims), stem_stride, _kernel(1, 0, dims))
        in_ch = CONV1_CHANNELS
        for name, repeats, channels, stride2d, stride3d in MFNET_SPEC:
            stride = stride2d if dims == 2 else stride3d
            units = OrderedDict()
            for i in range(repeats):
                units[f"B{i + 1:02d}"] = MultiFiberUnit(
                    dims, in_ch, channels, channels, stride if i == 0 else 1, i == 0, fibers,
                    multiplexer)
                in_ch = channels
            self.add_module(name, nn.Sequential(units))
        self.tail = nn.Sequential(OrderedDict([("bn", bn(in_ch)),
                                               ("relu", nn.ReLU(inplace=True))]))
        self.feature_dim = in_ch
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("conv1", nn.Sequential(self.conv1, self.maxpool)),
                ("conv2", self.conv2), ("conv3", self.conv3), ("conv4", self.conv4),
                ("conv5", nn.Sequential(self.conv5, self.tail))]

    @property
    def head(self) -> nn.Module:
        return self.classifier


def mfnet2d(num_classes: int = 1000) -> MFNet:
    """2D MF-Net for 224x224 images (Table 2: 5.8 M params, 861 M multiply-adds)."""
    return MFNet(2, num_classes)


def mfnet3d(num_classes: int = 400) -> MFNet:
    """3D MF-Net for 16x224x224 clips (Table 2: 8.0 M params, 11.1 G multiply-adds)."""
    return MFNet(3, num_classes)
