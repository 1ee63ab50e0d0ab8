"""Architectures in the shapes researchers bring, written with plain torch modules (no
torchvision): the memory estimate and the lean engine are tested on every one of them.

    ARCHS = {name: (builder, input_fn, num_classes)}
    model = builder(num_classes)      # same weights on every call (seeded)
    x = input_fn(batch_size)          # same input on every call (seeded)

Sizes are small, so a forward and backward at batch 8 take well under a second on one core.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCHS", "IMAGE_SHAPE", "SEQ_LEN", "VOCAB", "FEATURES", "build", "example"]

IMAGE_SHAPE = (3, 32, 32)  # the image nets' input (channels, height, width)
SEQ_LEN = 12  # tokens (or time steps) of the sequence models
VOCAB = 50  # token ids of the embedding models
FEATURES = 6  # features per time step of the GRU classifier


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> list:
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out)]


class SqueezeExcite(nn.Module):
    """Channel attention: pool, squeeze, excite, gate (a broadcasting multiply)."""

    def __init__(self, channels: int, squeezed: int, act: type[nn.Module],
                 gate: type[nn.Module]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        scale = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))  # (N, C, 1, 1)
        return x * scale


class StochasticDepth(nn.Module):
    """Drop a residual branch per sample in train mode (Huang et al. 2016), scaled by
    1 / survival so the expectation is unchanged; the identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        noise = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype,
                            device=x.device).bernoulli_(survival)
        return x * noise.div_(survival)


class InvertedResidual(nn.Module):
    """MobileNet's block: expand (1x1), depthwise, optional squeeze-excitation, project
    (1x1), a residual add where shapes allow, and stochastic depth on that branch."""

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int, k: int,
                 act: Callable[[], nn.Module], se: Callable[[int], nn.Module] | None = None,
                 drop: float = 0.0) -> None:
        super().__init__()
        mid = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(c_in, mid, 1), act()]
        layers += [*_conv_bn(mid, mid, k, stride, groups=mid), act()]
        if se is not None:
            layers.append(se(mid))
        layers += _conv_bn(mid, c_out, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out
        self.drop = StochasticDepth(drop) if self.residual and drop else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if not self.residual:
            return out
        if self.drop is not None:
            out = self.drop(out)
        return out + x


def _seeded(make: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10) -> nn.Module:
        torch.manual_seed(0)
        return make(num_classes)
    build.__name__ = make.__name__
    build.__doc__ = make.__doc__
    return build


@_seeded
def mobilenet_v3(num_classes: int) -> nn.Module:
    """MobileNetV3-like: in-place hardswish, squeeze-excitation gated by hardsigmoid."""
    hs = lambda: nn.Hardswish(inplace=True)  # noqa: E731
    re = lambda: nn.ReLU(inplace=True)  # noqa: E731
    se = lambda c: SqueezeExcite(c, max(c // 4, 4), nn.ReLU, nn.Hardsigmoid)  # noqa: E731
    return nn.Sequential(
        *_conv_bn(3, 8, 3, 2), hs(),
        InvertedResidual(8, 8, 1, 2, 3, re, se),
        InvertedResidual(8, 12, 3, 2, 3, re),
        InvertedResidual(12, 12, 3, 1, 3, re),
        InvertedResidual(12, 16, 3, 2, 5, hs, se),
        InvertedResidual(16, 16, 3, 1, 5, hs, se),
        *_conv_bn(16, 48, 1), hs(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(48, 64), nn.Hardswish(inplace=True), nn.Dropout(0.2),
        nn.Linear(64, num_classes))


@_seeded
def efficientnet(num_classes: int) -> nn.Module:
    """EfficientNet-like: in-place SiLU, squeeze-excitation gated by sigmoid, stochastic
    depth on the residual branches."""
    silu = lambda: nn.SiLU(inplace=True)  # noqa: E731
    se = lambda c: SqueezeExcite(c, max(c // 4, 4), nn.SiLU, nn.Sigmoid)  # noqa: E731
    return nn.Sequential(
        *_conv_bn(3, 8, 3, 2), silu(),
        InvertedResidual(8, 8, 1, 1, 3, silu, se, drop=0.1),
        InvertedResidual(8, 12, 4, 2, 3, silu, se),
        InvertedResidual(12, 12, 4, 1, 3, silu, se, drop=0.2),
        InvertedResidual(12, 16, 4, 2, 5, silu, se),
        *_conv_bn(16, 64, 1), silu(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, num_classes))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-BN, ReLU, a residual add (1x1 conv shortcut
    where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, 3)
        self.downsample = (nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18-like: 7x7 stem, max pooling, four stages of two basic blocks, average
    pooling and a linear head (narrow channels)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (8, 16, 24, 32)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, c_in = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(c_in, w, 1 if i == 0 else 2),
                                        BasicBlock(w, w, 1)))
            c_in = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


resnet18 = _seeded(ResNet18)


@_seeded
def mobilenet_v2(num_classes: int) -> nn.Module:
    """MobileNetV2-like: ReLU6 inverted residuals."""
    r6 = lambda: nn.ReLU6(inplace=True)  # noqa: E731
    return nn.Sequential(
        *_conv_bn(3, 8, 3, 2), nn.ReLU6(inplace=True),
        InvertedResidual(8, 8, 1, 1, 3, r6),
        InvertedResidual(8, 12, 6, 2, 3, r6),
        InvertedResidual(12, 12, 6, 1, 3, r6),
        InvertedResidual(12, 16, 6, 2, 3, r6),
        InvertedResidual(16, 16, 6, 1, 3, r6),
        *_conv_bn(16, 64, 1), nn.ReLU6(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, num_classes))


class Attention(nn.Module):
    """Multi-head self-attention through F.scaled_dot_product_attention (a ViT's)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, D)
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, T, D / heads)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: LayerNorm, attention (odtkit's through SDPA, or
    nn.MultiheadAttention), residual, LayerNorm, GELU MLP with dropout, residual."""

    def __init__(self, dim: int, heads: int, torch_mha: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = (nn.MultiheadAttention(dim, heads, dropout=0.1, batch_first=True)
                     if torch_mha else Attention(dim, heads, 0.0))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(0.1),
                                 nn.Linear(2 * dim, dim), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if isinstance(self.attn, nn.MultiheadAttention):
            y = self.attn(y, y, y)[0]
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small ViT: 8x8 patches by a strided conv, a class token, learned positions, two
    blocks (one attending through SDPA, one through nn.MultiheadAttention), a head."""

    def __init__(self, num_classes: int, dim: int = 32, heads: int = 4, patch: int = 8) -> None:
        super().__init__()
        tokens = (IMAGE_SHAPE[1] // patch) * (IMAGE_SHAPE[2] // patch)
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.drop = nn.Dropout(0.1)
        self.blocks = nn.Sequential(ViTBlock(dim, heads, False), ViTBlock(dim, heads, True))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W)
        x = self.patch(x).flatten(2).transpose(1, 2)  # (N, T, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(self.drop(x + self.pos))
        return self.head(self.norm(x)[:, 0])


vit = _seeded(ViT)


class TransformerClassifier(nn.Module):
    """Token embedding, learned positions, nn.TransformerEncoder (2 layers), mean pooling."""

    def __init__(self, num_classes: int, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.randn(1, SEQ_LEN, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, T) int64
        x = self.encoder(self.embed(tokens) + self.pos)
        return self.head(x.mean(1))


transformer = _seeded(TransformerClassifier)


class RNNClassifier(nn.Module):
    """A recurrent classifier: an embedding (token input) or a linear layer (feature
    input), a 2-layer nn.LSTM or nn.GRU, the last step's output into a linear head."""

    def __init__(self, num_classes: int, cell: type[nn.Module], tokens: bool,
                 hidden: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16) if tokens else nn.Linear(FEATURES, 16)
        self.rnn = cell(16, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T) ids or (N, T, FEATURES)
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


lstm = _seeded(lambda n: RNNClassifier(n, nn.LSTM, tokens=True))
gru = _seeded(lambda n: RNNClassifier(n, nn.GRU, tokens=False))


def _images(batch_size: int = 8) -> torch.Tensor:
    return torch.randn((batch_size, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(0))


def _tokens(batch_size: int = 8) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch_size, SEQ_LEN),
                         generator=torch.Generator().manual_seed(0))


def _features(batch_size: int = 8) -> torch.Tensor:
    return torch.randn((batch_size, SEQ_LEN, FEATURES),
                       generator=torch.Generator().manual_seed(0))


ARCHS: dict[str, tuple[Callable[..., nn.Module], Callable[..., torch.Tensor], int]] = {
    "mobilenet_v3": (mobilenet_v3, _images, 10),
    "efficientnet": (efficientnet, _images, 10),
    "resnet18": (resnet18, _images, 10),
    "mobilenet_v2": (mobilenet_v2, _images, 10),
    "vit": (vit, _images, 10),
    "transformer": (transformer, _tokens, 10),
    "lstm": (lstm, _tokens, 10),
    "gru": (gru, _features, 10),
}


def build(name: str) -> nn.Module:
    """Architecture ``name`` of ARCHS with its number of classes, in train mode."""
    builder, _, num_classes = ARCHS[name]
    return builder(num_classes).train()


def example(name: str, batch_size: int = 8) -> torch.Tensor:
    """The fixed example input of architecture ``name``."""
    return ARCHS[name][1](batch_size)
