"""Architectures of the tiny model zoo (built by ``odtkit.models.create``).

Every model is made only of standard ``torch.nn`` modules with known shapes, so
hook-based tools (summary, memory estimates, the lean engine) see every layer.
Residual adds are written in ``forward`` as ``x + self.block(x)``. 2-D CNNs use
padded convolutions and adaptive global pooling, so they run on inputs as small
as 1x8x8 (strided 'same'-padded convolutions never shrink a side below 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded: at least 1, a multiple of 8 once it reaches 8."""
    scaled = channels * width
    if scaled < 8:
        return max(1, round(scaled))
    return max(8, int(round(scaled / 8)) * 8)


def conv_bn_act(in_ch: int, out_ch: int, kernel_size: int | tuple[int, int], stride: int = 1,
                groups: int = 1, act: type[nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    """Conv2d ('same' padding, no bias) + BatchNorm2d + optional activation."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, (kh, kw), stride=stride, padding=(kh // 2, kw // 2),
                  groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def fit_kernel(kernel_size: int, size: tuple[int, int]) -> tuple[int, int]:
    """Largest useful odd kernel on a (H, W) map: a 'same'-padded kxk conv on a side of s
    only ever touches its central 2s-1 taps, the rest would multiply padding zeros."""
    return tuple(min(kernel_size, 2 * s - 1) for s in size)  # type: ignore[return-value]


def strided(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Map size after a 'same'-padded conv with ``stride``: ceil(side / stride)."""
    return tuple(-(-s // stride) for s in size)  # type: ignore[return-value]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, kxk depthwise, 1x1 linear bottleneck (+ residual)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int,
                 kernel_size: int | tuple[int, int] = 3) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_act(in_ch, hidden, 1))                      # expand
        layers.append(conv_bn_act(hidden, hidden, kernel_size, stride, groups=hidden))  # depthwise
        layers.append(conv_bn_act(hidden, out_ch, 1, act=None))               # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


class ConvNet2d(nn.Module):
    """Stem conv, a stack of blocks, optional 1x1 head conv, global pool, classifier."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module | None,
                 features: int, num_classes: int) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head  # None: blocks feed the pool directly
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        if self.head is not None:
            x = self.head(x)                        # (B, features, H', W')
        return self.classifier(self.flatten(self.pool(x)))  # (B, num_classes)


# (expansion, out channels, stride, kernel size): an MCUNet-like searched stack with
# varied kernels and expansion ratios (first block: depthwise-separable, expansion 1)
_MCUNET_BLOCKS = [
    (1, 8, 1, 3),
    (4, 16, 2, 7),
    (3, 16, 1, 3),
    (5, 24, 2, 5),
    (4, 24, 1, 5),
    (6, 40, 2, 3),
    (5, 40, 1, 7),
    (4, 48, 1, 5),
]

# (expansion, out channels, repeats, first stride): MobileNetV2 at a tiny width
_MBV2_BLOCKS = [
    (1, 8, 1, 1),
    (6, 16, 2, 2),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 48, 1, 1),
]


def mcunet_tiny(input_shape: tuple[int, ...], num_classes: int, width: float) -> nn.Module:
    """MCUNet-like CNN: stride-2 stem, inverted residuals with 3/5/7 kernels, pool, linear.

    Depthwise kernels are trimmed to what the feature map can use (see ``fit_kernel``), so
    on tiny inputs (1x8x8) the late 7x7 kernels become 1x1 with the same function.
    """
    c, size = scale_channels(16, width), strided(tuple(input_shape[1:]), 2)
    stem = conv_bn_act(input_shape[0], c, 3, stride=2)
    blocks: list[nn.Module] = []
    for expansion, out, stride, k in _MCUNET_BLOCKS:
        out = scale_channels(out, width)
        blocks.append(InvertedResidual(c, out, stride, expansion, fit_kernel(k, size)))
        c, size = out, strided(size, stride)
    return ConvNet2d(stem, blocks, None, c, num_classes)


def mbv2_tiny(input_shape: tuple[int, ...], num_classes: int, width: float) -> nn.Module:
    """MobileNetV2-tiny: inverted residuals, ReLU6, linear bottlenecks, 1x1 head conv."""
    c, size = scale_channels(16, width), strided(tuple(input_shape[1:]), 2)
    stem = conv_bn_act(input_shape[0], c, 3, stride=2)
    blocks: list[nn.Module] = []
    for expansion, out, repeats, first_stride in _MBV2_BLOCKS:
        out = scale_channels(out, width)
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            blocks.append(InvertedResidual(c, out, stride, expansion, fit_kernel(3, size)))
            c, size = out, strided(size, stride)
    features = scale_channels(128, width)
    head = conv_bn_act(c, features, 1)
    return ConvNet2d(stem, blocks, head, features, num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs; 1x1 strided projection shortcut when shapes change."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shortcut(x) + self.body(x))


def resnet8(in_ch: int, num_classes: int, width: float) -> nn.Module:
    """MLPerf Tiny ResNet-8: 3x3 stem, three basic blocks (16/32/64 ch), pool, linear."""
    c1, c2, c3 = (scale_channels(c, width) for c in (16, 32, 64))
    stem = nn.Sequential(nn.Conv2d(in_ch, c1, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c1), nn.ReLU())
    blocks = [BasicBlock(c1, c1, 1), BasicBlock(c1, c2, 2), BasicBlock(c2, c3, 2)]
    return ConvNet2d(stem, blocks, None, c3, num_classes)


def conv1d_bn_relu(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:
    """Conv1d ('same' padding, no bias) + BatchNorm1d + ReLU."""
    return nn.Sequential(
        nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2,
                  groups=groups, bias=False),
        nn.BatchNorm1d(out_ch),
        nn.ReLU(),
    )


class DSCNN(nn.Module):
    """DS-CNN for (features, time) input: Conv1d stem, depthwise-separable blocks, pool, linear."""

    def __init__(self, in_ch: int, num_classes: int, width: float, num_blocks: int = 4) -> None:
        super().__init__()
        c = scale_channels(64, width)
        self.stem = conv1d_bn_relu(in_ch, c, 5, stride=2)
        self.blocks = nn.Sequential(*[
            nn.Sequential(conv1d_bn_relu(c, c, 3, groups=c),   # depthwise over time
                          conv1d_bn_relu(c, c, 1))             # pointwise mixing
            for _ in range(num_blocks)
        ])
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))                            # (B, C, T')
        return self.classifier(self.flatten(self.pool(x)))       # (B, num_classes)


def mlp(input_shape: tuple[int, ...], num_classes: int, width: float) -> nn.Module:
    """Flatten, two hidden ReLU layers (128 and 64 units at width 1), linear classifier."""
    h1, h2 = scale_channels(128, width), scale_channels(64, width)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), h1), nn.ReLU(),
        nn.Linear(h1, h2), nn.ReLU(),
        nn.Linear(h2, num_classes),
    )
