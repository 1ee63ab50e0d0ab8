"""Fake-quant quantization-aware training (QAT) and BatchNorm folding.

    model = fold_bn_(model)                          # BN -> conv weights (eval semantics)
    prepare_qat_(model, QATConfig(weight_bits=8))    # every Conv1d/Conv2d/Linear fake-quantizes
    # ... train as usual; parameter names and Parameter objects are unchanged

Where the quantizers sit, the convention an int8 engine needs:

- Weights: symmetric (zero point 0, narrow range [-127, 127] at 8 bits), per output channel
  (axis 0) by default, scales from the current weights at every forward, as the int8
  conversion computes them. Biases stay float (the integer graph stores them as int32 at
  scale s_w * s_x).
- Activations: each quantized layer fake-quantizes its *input*, asymmetric and per tensor
  (TFLite int8: [-128, 127] with a zero point). The inputs of the convs and linears are the
  tensors between layers (after ReLU, pooling and residual adds), so every activation the
  integer graph passes between layers is int8 with the (scale, zero point) of the layer that
  consumes it; the last layer's output (the logits) stays float.
- Observers track the input range in train mode (``minmax``: running min/max, as PyTorch's
  ``MinMaxObserver``; ``moving-average``: min += c * (batch_min - min), the first batch taken
  as is, as ``MovingAverageMinMaxObserver``) and are frozen in eval mode. Gradients pass by
  PyTorch's straight-through estimator (see ``quantizers.fake_quantize``).

``prepare_qat_`` changes each layer's class in place to a QAT subclass (``QATLinear`` ...), so
``isinstance(m, nn.Linear)`` still holds and parameter names stay; the state dict gains two
buffers per layer (``activation_min``/``activation_max``), and loading a float checkpoint
into a prepared model leaves them as they are instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_int, check_real
from .quantizers import (
    MAX_BITS,
    MIN_BITS,
    calculate_qparams,
    fake_quantize,
    observe_range,
    qrange,
)

__all__ = ["QATConfig", "prepare_qat_", "fold_bn_", "QATLinear", "QATConv1d", "QATConv2d",
           "OBSERVERS"]

OBSERVERS = ("minmax", "moving-average")
_OBSERVER_BUFFERS = ("activation_min", "activation_max")


@dataclass(frozen=True)
class QATConfig:
    """How ``prepare_qat_`` quantizes: bit widths, weight scheme, activation observer.

    ``averaging_constant`` is the moving-average observer's c (PyTorch's default 0.01).
    """

    weight_bits: int = 8
    activation_bits: int = 8
    symmetric_weights: bool = True
    per_channel_weights: bool = True
    activation_observer: str = "moving-average"
    averaging_constant: float = 0.01

    def __post_init__(self) -> None:
        check_int("weight_bits", self.weight_bits, low=MIN_BITS, high=MAX_BITS)
        check_int("activation_bits", self.activation_bits, low=MIN_BITS, high=MAX_BITS)
        for name in ("symmetric_weights", "per_channel_weights"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got "
                                f"{name}={getattr(self, name)!r}")
        check_choice("activation_observer", self.activation_observer, OBSERVERS)
        check_real("averaging_constant", self.averaging_constant, low=0, high=1, low_open=True)


class QATMixin:
    """What a QAT layer adds to its float class: weight and input fake quantization and an
    input-range observer. Set up by ``prepare_qat_`` (never constructed directly)."""

    qat_config: QATConfig
    weight: nn.Parameter
    training: bool
    activation_min: torch.Tensor
    activation_max: torch.Tensor

    def extra_repr(self) -> str:
        c = self.qat_config
        return (f"{super().extra_repr()}, weight_bits={c.weight_bits}, "  # type: ignore[misc]
                f"activation_bits={c.activation_bits}, observer={c.activation_observer!r}")

    def weight_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) of the weight now: (C_out,) per channel or () per tensor."""
        c = self.qat_config
        axis = 0 if c.per_channel_weights else None
        return calculate_qparams(*observe_range(self.weight, axis), c.weight_bits,
                                 c.symmetric_weights)

    def activation_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) of this layer's input, from the observed range."""
        if not bool(torch.isfinite(self.activation_min)):
            raise RuntimeError(
                f"{type(self).__name__}: the input range has not been observed yet; run the "
                "model in train mode (model.train()) on a few batches first, observers only "
                "update in train mode")
        return calculate_qparams(self.activation_min, self.activation_max,
                                 self.qat_config.activation_bits, symmetric=False)

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight (straight-through gradient to ``self.weight``)."""
        c = self.qat_config
        scale, zero_point = self.weight_qparams()
        return fake_quantize(self.weight, scale, zero_point,
                             *qrange(c.weight_bits, c.symmetric_weights),
                             axis=0 if c.per_channel_weights else None)

    @torch.no_grad()
    def observe_(self, x: torch.Tensor) -> None:
        """Update the input range with the batch ``x`` (min/max of all its entries)."""
        lo, hi = observe_range(x)
        if self.qat_config.activation_observer == "minmax" or not bool(
                torch.isfinite(self.activation_min)):
            lo, hi = torch.minimum(lo, self.activation_min), torch.maximum(hi, self.activation_max)
        else:
            c = self.qat_config.averaging_constant
            lo = self.activation_min + c * (lo - self.activation_min)
            hi = self.activation_max + c * (hi - self.activation_max)
        self.activation_min.copy_(lo)
        self.activation_max.copy_(hi)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Observe ``x`` (train mode only), then fake-quantize it to the activation range."""
        if self.training:
            self.observe_(x)
        scale, zero_point = self.activation_qparams()
        return fake_quantize(x, scale, zero_point,
                             *qrange(self.qat_config.activation_bits, symmetric=False))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:  # type: ignore[no-untyped-def]
        """A float checkpoint (no observer buffers) loads: the ranges stay as they are."""
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs)
        for name in _OBSERVER_BUFFERS:
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)


class QATLinear(QATMixin, nn.Linear):
    """nn.Linear with fake-quantized input and weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)


class QATConv1d(QATMixin, nn.Conv1d):
    """nn.Conv1d with fake-quantized input and weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


class QATConv2d(QATMixin, nn.Conv2d):
    """nn.Conv2d with fake-quantized input and weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


# float class (exactly this type; a subclass may have its own forward) -> QAT class
_QAT_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QATLinear, nn.Conv1d: QATConv1d, nn.Conv2d: QATConv2d,
}


def prepare_qat_(model: nn.Module, config: QATConfig | None = None) -> nn.Module:
    """Make every nn.Linear / nn.Conv1d / nn.Conv2d of ``model`` (exactly those types)
    fake-quantize its weight and its input, in place; return ``model``.

    Parameter names and objects stay (optimizers and plans made before keep working).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = QATConfig() if config is None else config
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, got {config!r}; e.g. QATConfig(weight_bits=8)")
    done = [name for name, m in model.named_modules() if isinstance(m, QATMixin)]
    if done:
        raise ValueError(f"model is already prepared for QAT (e.g. layer {done[0]!r}); "
                         "prepare a fresh float model instead")
    layers = [m for m in model.modules() if type(m) in _QAT_CLASSES]
    if not layers:
        kinds = ", ".join(sorted({type(m).__name__ for m in model.modules()}))
        raise ValueError(f"nothing to quantize: QAT covers nn.Linear, nn.Conv1d and "
                         f"nn.Conv2d, and the model has only {kinds}")
    for m in layers:
        m.__class__ = _QAT_CLASSES[type(m)]
        m.qat_config = config
        for name, value in zip(_OBSERVER_BUFFERS, (float("inf"), float("-inf")), strict=True):
            m.register_buffer(name, torch.tensor(value, device=m.weight.device))
    return model


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.Module, where: str) -> None:
    """conv <- bn(conv) in eval semantics: w * g / sqrt(var + eps), (b - mean) * ... + beta."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"the BatchNorm at {where!r} keeps no running statistics "
                         "(track_running_stats=False), so it cannot be folded; build it with "
                         "track_running_stats=True")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"the BatchNorm at {where!r} has {bn.num_features} features but the "
                         f"conv before it {conv.out_channels} output channels")
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    factor = gamma * torch.rsqrt(var + bn.eps)                       # (C_out,)
    w = conv.weight
    w.copy_(w.double() * factor.reshape(-1, *[1] * (w.dim() - 1)))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    folded = ((bias - mean) * factor + beta).to(w.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(folded, requires_grad=w.requires_grad)
    else:
        conv.bias.copy_(folded)


def fold_bn_(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv in an nn.Sequential (how the zoo
    builds conv-BN-act) into that conv's weight and bias, with the running statistics (eval
    semantics, as deployment graphs), and replace it by nn.Identity; return ``model``.

    The conv keeps its weight Parameter; a conv without bias gets one. Other BatchNorms stay.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for path, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (_, conv), (name, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, _CONVS) and isinstance(bn, _NORMS):
                _fold(conv, bn, f"{path}.{name}" if path else name)
                setattr(seq, name, nn.Identity())
    return model
