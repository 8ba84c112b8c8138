"""Reference architectures that slimtune's dependency graph, speedup and measures must handle.

Small (CPU-test sized) but structurally faithful versions of the families that make channel pruning hard:
plain stacks (MLP, VGG with a flatten → linear classifier), residual adds (ResNet-20, MobileNetV2, ResNeXt),
concatenation (DenseNet, Inception), depthwise and grouped convolutions (MobileNetV2, ResNeXt). They are
written the way real model code is written, mixing modules (``nn.ReLU``, ``nn.ReLU6``) with functional calls
(``F.relu``, ``torch.cat``, ``x + y``, ``x.view``, ``torch.flatten``), and all of them trace with
``torch.fx.symbolic_trace``.

Every factory returns a randomly initialised model in eval mode. Batch-norm layers get non-trivial
parameters and running statistics (see :func:`randomize_batchnorm_`), so a pruning or speedup bug that
slices a BN buffer wrongly changes the output instead of hiding behind ``mean=0, var=1``.

Example:
    .. code-block:: python

        import torch
        from slimtune.examples.models import REFERENCE_MODELS

        for name, (factory, input_shape) in REFERENCE_MODELS.items():
            model = factory()
            out = model(torch.randn(2, *input_shape))
            assert out.shape == (2, 10), name
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.errors import ArgumentError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_ModuleT = TypeVar("_ModuleT", bound=nn.Module)

__all__ = [
    "REFERENCE_MODELS",
    "MLP",
    "VGGSmall",
    "BasicBlock",
    "ResNet20",
    "InvertedResidual",
    "MobileNetV2Small",
    "DenseLayer",
    "Transition",
    "DenseNetSmall",
    "ConvBNReLU",
    "InceptionModule",
    "InceptionSmall",
    "ResNeXtBottleneck",
    "ResNeXtSmall",
    "mlp",
    "vgg_small",
    "resnet20",
    "mobilenet_v2_small",
    "densenet_small",
    "inception_small",
    "resnext_small",
    "randomize_batchnorm_",
]


# --------------------------------------------------------------------------------------------------------
# helpers


def randomize_batchnorm_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every batch-norm layer of ``model`` non-trivial affine parameters and running statistics.

    ``weight ~ U(0.5, 1.5)``, ``bias ~ N(0, 0.1)``, ``running_mean ~ N(0, 0.1)``, ``running_var ~ U(0.5, 1.5)``.
    A freshly initialised BN in eval mode is the identity, which would let a wrong BN slice go unnoticed.

    Args:
        model: The model to modify in place.
        generator: Optional random generator (the global one by default).

    Returns:
        ``model`` itself.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                if module.track_running_stats and module.running_mean is not None:
                    module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                    module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model


def _init_weights(model: nn.Module) -> None:
    """He (fan-out) init for convolutions, small normal init for linear layers, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _finalize(model: _ModuleT) -> _ModuleT:
    """Initialise ``model``, give its BN layers non-trivial statistics and put it in eval mode."""
    _init_weights(model)
    randomize_batchnorm_(model)
    return model.eval()


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90 % of it (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


# --------------------------------------------------------------------------------------------------------
# MLP


class MLP(nn.Module):
    """A Linear/ReLU stack; any input is flattened to ``(N, in_features)`` first.

    Args:
        in_features: Size of the flattened input.
        hidden: Widths of the hidden layers.
        num_classes: Number of outputs.
    """

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc(self.features(x))


def mlp(in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10) -> MLP:
    """A multi-layer perceptron for ``(N, in_features)`` inputs (``(N, 1, 8, 8)`` digits work too)."""
    return _finalize(MLP(in_features, hidden, num_classes))


# --------------------------------------------------------------------------------------------------------
# VGG


class VGGSmall(nn.Module):
    """VGG-style conv-BN-ReLU stacks with max pooling and a two-layer classifier on the flattened map.

    Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015.
    There is deliberately no global pooling: the last feature map is flattened with ``x.view`` so that each
    channel maps to a block of ``H * W`` features of the first linear layer.

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        cfg: Conv widths, ``'M'`` for a 2×2 max pool.
        input_size: Height (= width) of the input, used to size the first linear layer.
        hidden: Width of the hidden linear layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        cfg: Sequence[int | str] = (32, "M", 64, "M", 128, 128, "M"),
        input_size: int = 32,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        if size < 1:
            raise ArgumentError(f"vgg_small: cfg {tuple(cfg)} pools an input of size {input_size} down to nothing")
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(channels * size * size, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def vgg_small(
    in_channels: int = 3,
    num_classes: int = 10,
    cfg: Sequence[int | str] = (32, "M", 64, "M", 128, 128, "M"),
    input_size: int = 32,
    hidden: int = 256,
) -> VGGSmall:
    """A small VGG: 3×32×32 → 128×4×4 → flatten → Linear(2048, 256) → ReLU → Linear(256, classes)."""
    return _finalize(VGGSmall(in_channels, num_classes, cfg, input_size, hidden))


# --------------------------------------------------------------------------------------------------------
# ResNet


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv-BN with a residual add; 1×1 conv + BN shortcut when shapes change.

    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (shortcut option B).

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first conv and of the shortcut.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return F.relu(out)


class ResNet20(nn.Module):
    """CIFAR-style ResNet: a 3×3 stem, three stages of basic blocks (widths w, 2w, 4w), global pool, linear.

    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (the 6n+2 CIFAR networks).

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        width: Width ``w`` of the first stage.
        blocks_per_stage: ``n``; 3 gives ResNet-20.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16, blocks_per_stage: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Sequential] = []
        planes = width
        for i, stage_width in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(planes, stage_width, stride))
                planes = stage_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet20(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> ResNet20:
    """ResNet-20 for 32×32 inputs (He et al., CVPR 2016), with 1×1 conv + BN strided shortcuts."""
    return _finalize(ResNet20(in_channels, num_classes, width))


# --------------------------------------------------------------------------------------------------------
# MobileNetV2


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1×1 expand, 3×3 depthwise, 1×1 linear projection, optional residual.

    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018. With
    ``expand_ratio == 1`` there is no expansion conv (as in the network's first block); the residual add is
    used when ``stride == 1`` and the input and output widths agree.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the depthwise conv.
        expand_ratio: Expansion factor ``t``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Small(nn.Module):
    """A shortened MobileNetV2 for 32×32 inputs: stem, 8 inverted residual blocks, 1×1 head conv, linear.

    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018. The stem has stride
    1 (CIFAR variant); the blocks follow the paper's ``(t, c, n, s)`` table, cut after the 96-channel stage.

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        width_mult: Width multiplier applied to every layer (rounded to multiples of 8).
    """

    #: ``(expand_ratio t, channels c, repeats n, first stride s)`` per stage, before the width multiplier.
    SETTINGS: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 2, 2),
        (6, 64, 2, 2),
        (6, 96, 1, 1),
    )

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width_mult: float = 0.5) -> None:
        super().__init__()
        channels = _make_divisible(32 * width_mult)
        last_channels = _make_divisible(1280 * width_mult)
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU6(inplace=True),
            )
        ]
        for t, c, n, s in self.SETTINGS:
            out_channels = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
        layers.append(
            nn.Sequential(
                nn.Conv2d(channels, last_channels, 1, bias=False),
                nn.BatchNorm2d(last_channels),
                nn.ReLU6(inplace=True),
            )
        )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.mean((2, 3))
        return self.classifier(x)


def mobilenet_v2_small(in_channels: int = 3, num_classes: int = 10, width_mult: float = 0.5) -> MobileNetV2Small:
    """A small MobileNetV2 (Sandler et al., CVPR 2018) with depthwise convs and inverted residuals."""
    return _finalize(MobileNetV2Small(in_channels, num_classes, width_mult))


# --------------------------------------------------------------------------------------------------------
# DenseNet


class DenseLayer(nn.Module):
    """DenseNet(-BC) layer: BN-ReLU-conv (1×1 bottleneck then 3×3), output concatenated to its input.

    Huang et al., "Densely Connected Convolutional Networks", CVPR 2017.

    Args:
        in_channels: Input channels (everything concatenated so far).
        growth: Growth rate ``k``: channels this layer adds.
        bottleneck: Use the 1×1 bottleneck to ``4k`` channels (DenseNet-B) before the 3×3 conv.
    """

    def __init__(self, in_channels: int, growth: int, bottleneck: bool = True) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        width = 4 * growth if bottleneck else in_channels
        if bottleneck:
            self.norm1 = nn.BatchNorm2d(in_channels)
            self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.bottleneck:
            out = self.conv1(F.relu(self.norm1(out)))
        new = self.conv2(F.relu(self.norm2(out)))
        return torch.cat([x, new], 1)


class Transition(nn.Module):
    """DenseNet transition: BN-ReLU-1×1 conv (compression) and 2×2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNetSmall(nn.Module):
    """A small DenseNet-BC: stem conv, dense blocks joined by transitions, BN-ReLU, global pool, linear.

    Huang et al., "Densely Connected Convolutional Networks", CVPR 2017. Each dense layer concatenates its
    ``growth`` new channels to everything before it, so channel ranges of later layers' inputs map back to
    many producers.

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        growth: Growth rate ``k``.
        block_layers: Number of dense layers per block.
        compression: Transition compression factor ``θ``.
        bottleneck: Use 1×1 bottlenecks in the dense layers.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        growth: int = 12,
        block_layers: Sequence[int] = (3, 3),
        compression: float = 0.5,
        bottleneck: bool = True,
    ) -> None:
        super().__init__()
        channels = 2 * growth
        self.conv0 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for i, n_layers in enumerate(block_layers):
            for _ in range(n_layers):
                blocks.append(DenseLayer(channels, growth, bottleneck))
                channels += growth
            if i != len(block_layers) - 1:
                out_channels = int(channels * compression)
                blocks.append(Transition(channels, out_channels))
                channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.norm_final = nn.BatchNorm2d(channels)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.conv0(x))
        x = F.relu(self.norm_final(x))
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def densenet_small(in_channels: int = 3, num_classes: int = 10, growth: int = 12) -> DenseNetSmall:
    """A DenseNet-BC with 2 dense blocks of 3 layers (Huang et al., CVPR 2017)."""
    return _finalize(DenseNetSmall(in_channels, num_classes, growth))


# --------------------------------------------------------------------------------------------------------
# Inception


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class InceptionModule(nn.Module):
    """Inception module with four parallel branches concatenated along channels.

    Szegedy et al., "Going Deeper with Convolutions", CVPR 2015; the 5×5 branch is factorised into two 3×3
    convs as in Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.

    Args:
        in_channels: Input channels.
        ch1x1: Output of the 1×1 branch.
        ch3x3_reduce: 1×1 reduction before the 3×3 branch.
        ch3x3: Output of the 3×3 branch.
        ch_dbl_reduce: 1×1 reduction before the double-3×3 branch.
        ch_dbl: Output of the double-3×3 branch.
        pool_proj: Output of the 1×1 projection after the 3×3 max pool.
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3_reduce: int,
        ch3x3: int,
        ch_dbl_reduce: int,
        ch_dbl: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = ConvBNReLU(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(ConvBNReLU(in_channels, ch3x3_reduce, 1), ConvBNReLU(ch3x3_reduce, ch3x3, 3))
        self.branch3 = nn.Sequential(
            ConvBNReLU(in_channels, ch_dbl_reduce, 1),
            ConvBNReLU(ch_dbl_reduce, ch_dbl, 3),
            ConvBNReLU(ch_dbl, ch_dbl, 3),
        )
        self.branch4_pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.branch4 = ConvBNReLU(in_channels, pool_proj, 1)
        self.out_channels = ch1x1 + ch3x3 + ch_dbl + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1(x)
        b2 = self.branch2(x)
        b3 = self.branch3(x)
        b4 = self.branch4(self.branch4_pool(x))
        return torch.cat([b1, b2, b3, b4], dim=1)


class InceptionSmall(nn.Module):
    """A small Inception network: stem, two Inception modules, a 1×1 conv on the concat, pool, linear.

    Szegedy et al., "Going Deeper with Convolutions", CVPR 2015.

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, 32, 3)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.inception1 = InceptionModule(32, 16, 16, 24, 8, 12, 12)  # -> 64
        self.inception2 = InceptionModule(self.inception1.out_channels, 24, 24, 32, 12, 16, 16)  # -> 88
        self.pool2 = nn.MaxPool2d(2, 2)
        self.head = ConvBNReLU(self.inception2.out_channels, 128, 1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.stem(x))
        x = self.inception1(x)
        x = self.pool2(self.inception2(x))
        x = self.head(x)
        x = x.mean((2, 3))
        return self.fc(x)


def inception_small(in_channels: int = 3, num_classes: int = 10) -> InceptionSmall:
    """A two-module Inception network (Szegedy et al., CVPR 2015) whose head conv consumes a concatenation."""
    return _finalize(InceptionSmall(in_channels, num_classes))


# --------------------------------------------------------------------------------------------------------
# ResNeXt


class ResNeXtBottleneck(nn.Module):
    """ResNeXt bottleneck: 1×1 reduce, grouped 3×3 (``groups=cardinality``), 1×1 expand, residual add.

    Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        group_width: Channels ``D`` of the grouped conv (its input and output width).
        cardinality: Number of groups ``C``.
        stride: Stride of the grouped conv and of the shortcut.
    """

    def __init__(
        self, in_channels: int, out_channels: int, group_width: int, cardinality: int, stride: int = 1
    ) -> None:
        super().__init__()
        if group_width % cardinality:
            raise ArgumentError(
                f"ResNeXtBottleneck: group_width {group_width} is not divisible by cardinality {cardinality}"
            )
        self.conv_reduce = nn.Conv2d(in_channels, group_width, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(group_width)
        self.conv_grouped = nn.Conv2d(
            group_width, group_width, 3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.bn_grouped = nn.BatchNorm2d(group_width)
        self.conv_expand = nn.Conv2d(group_width, out_channels, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn_reduce(self.conv_reduce(x)))
        out = self.relu(self.bn_grouped(self.conv_grouped(out)))
        out = self.bn_expand(self.conv_expand(out))
        out = out + identity
        return F.relu(out)


class ResNeXtSmall(nn.Module):
    """A small ResNeXt: a stem ending in a grouped 1×1 conv (32 → 64, ``groups=2``), two stages of two
    bottlenecks with grouped 3×3 convs, global pool, linear.

    Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017. The stem's grouped
    1×1 conv has different input and output widths, the bottlenecks' grouped convs equal ones.

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        cardinality: Groups of the 3×3 convs.
        width: Width ``D`` of the grouped convs in the first stage (doubled in the second).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, cardinality: int = 4, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 1, groups=2, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.layer1 = nn.Sequential(
            ResNeXtBottleneck(64, 128, width, cardinality, stride=1),
            ResNeXtBottleneck(128, 128, width, cardinality, stride=1),
        )
        self.layer2 = nn.Sequential(
            ResNeXtBottleneck(128, 256, 2 * width, cardinality, stride=2),
            ResNeXtBottleneck(256, 256, 2 * width, cardinality, stride=1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def resnext_small(in_channels: int = 3, num_classes: int = 10, cardinality: int = 4, width: int = 32) -> ResNeXtSmall:
    """A small ResNeXt (Xie et al., CVPR 2017) with grouped convs of equal and of unequal in/out widths."""
    return _finalize(ResNeXtSmall(in_channels, num_classes, cardinality, width))


# --------------------------------------------------------------------------------------------------------
# registry

#: Short name → (factory with default arguments, input shape without the batch dimension).
REFERENCE_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (64,)),
    "vgg": (vgg_small, (3, 32, 32)),
    "resnet20": (resnet20, (3, 32, 32)),
    "mobilenetv2": (mobilenet_v2_small, (3, 32, 32)),
    "densenet": (densenet_small, (3, 32, 32)),
    "inception": (inception_small, (3, 32, 32)),
    "resnext": (resnext_small, (3, 32, 32)),
}
