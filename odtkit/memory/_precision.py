"""Memory per training precision: how each one's step runs and what its bytes count.

- "fp32": tensors at their own size (the trace, the rules and the real step).
- "bf16" / "fp16": the real ``torch.autocast("cpu")`` step (fp16 with a GradScaler):
  parameters and gradients fp32 (master weights), what autograd keeps at its own size
  (2 bytes where autocast cast it; the cast weight copies count as activations), the
  scaler's scale and growth tracker as optimizer state. The estimate traces forward and
  loss under the same autocast (``_shell``), so it sees the casts autocast makes and the
  dtypes ops run in, and plays the step with autocast's weight cache (a trained weight's
  copy lives until autocast exits after the loss), gradients flowing back in 2 bytes
  through the casts, the scaler's own tensors and the optimizer's step (``_update``).
- "fp8-e4m3" / "fp8-e5m2": the fp8-simulated step (``fp8_autocast`` around forward)
  counted as a device with float8 storage keeps it: parameters fp32 (master weights, 4
  bytes), the copies ``fp8_autocast`` makes of conv/linear inputs and weights and keeps for
  backward 1 byte per element (``is_fp8_cast`` marks them), gradients 1 byte for the
  parameters whose gradient arrives only through those casts (conv/linear weights), 4 for
  the rest (biases, norms), optimizer state 4, other kept tensors at their own size (4).
  The estimate plays the same step by rules: every conv/linear node keeps fresh 1-byte
  copies in place of its input and weight. ``peak_bytes`` is the sum of the categories.
- "int8": the int8 graph (``odt.quant.to_int8``) trained in integer units, counted as the
  device keeps it, per element: int8 weights 1 byte, int32 biases 4, quantization
  parameters (scales, zero points, multipliers, shifts) 4, float-head parameters 4;
  gradients and optimizer state 4 (fp32; the emulation keeps bias gradients in float64);
  every tensor kept for backward 1 byte (int8 activations, clamp masks, max-pool window
  positions); scalars kept for backward (copies of a per-tensor scale) and cast copies of
  a weight 0 (the device reads the stored tensor). ``peak_bytes`` of an int8 report is
  the sum of the four categories: what the kept tensors need together (the integer
  kernels' scratch is not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.summary import backward_macs
from ..plans import TrainPlan
from ._measure import StepSetup
from ._trace import check_logits

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# bytes per element, by category, as each precision's report counts them
ELEMENT_BYTES = {
    "fp32": "weights 4, gradients 4, optimizer 4, activations 4",
    "bf16": "weights 4 (fp32 master), gradients 4, optimizer 4, activations 2 in bf16 "
            "(autocast's copies of conv/linear inputs and weights, what runs on them), 4 "
            "in fp32 (the input, what autocast runs in fp32)",
    "fp16": "weights 4 (fp32 master), gradients 4, optimizer 4 plus the loss scaler's "
            "scale and growth tracker (4 + 4), activations 2 in fp16 (autocast's copies of "
            "conv/linear inputs and weights, what runs on them), 4 in fp32 (the input, "
            "what autocast runs in fp32)",
    "int8": "weights 1 (int8), biases 4 (int32), quantization parameters 4, gradients 4, "
            "optimizer 4, activations and masks 1",
    **{name: "weights 4 (fp32 master), gradients 1 where they arrive through the fp8 "
             "casts (conv/linear weights), else 4, optimizer 4, activations 1 for the fp8 "
             "copies conv/linear keep (inputs and weights), 4 for the rest"
       for name in ("fp8-e4m3", "fp8-e5m2")},
}
FP8 = {"fp8-e4m3": torch.float8_e4m3fn, "fp8-e5m2": torch.float8_e5m2}
FP8_NOTE = ("fp8 step as a device with float8 storage keeps it: fp32 master weights 4 B, "
            "the fp8 copies conv/linear keep for backward (inputs, weights) and the weight "
            "gradients that arrive through the casts 1 B per element, everything else 4 B; "
            "peak = the four categories together")
INT8_NOTE = ("int8 graph as a device keeps it: weights 1 B, biases and quantization "
             "parameters 4 B, gradients and optimizer state 4 B, kept activations and masks "
             "1 B per element; peak = the four categories together")


def _int8_model_type() -> type:
    from ..quant import Int8Model

    return Int8Model


def is_int8_model(model: nn.Module) -> bool:
    return isinstance(model, _int8_model_type())


def check_precision_model(plan: TrainPlan, model: nn.Module) -> None:
    """Raise ValueError unless ``model`` is what a step at ``plan.precision`` trains."""
    precision = plan.precision
    int8 = is_int8_model(model)
    if precision == "int8" and not int8:
        raise ValueError(f"plan precision 'int8' needs the int8 graph, but the model is a "
                         f"{type(model).__name__}; convert it with "
                         "odt.quant.to_int8(model, calibration_inputs) and pass that")
    if int8 and precision != "int8":
        raise ValueError(f"the model is an Int8Model, but the plan's precision is "
                         f"{precision!r}; make the plan with precision='int8'")
    if precision in AUTOCAST or precision in FP8:
        have = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
        how = "under autocast" if precision in AUTOCAST else "through fp8 casts"
        if have and have != ["torch.float32"]:
            raise ValueError(f"plan precision {precision!r} trains float32 master weights "
                             f"{how}, but the model's parameters are {have}; pass "
                             "the float32 model (model.float())")
    elif not int8:
        plan.check_dtype(model)


def step_setup(precision: str, model: nn.Module) -> StepSetup:
    """How ``measure`` runs and counts one step of ``model`` at ``precision``."""
    if precision in AUTOCAST:
        return StepSetup(autocast=AUTOCAST[precision], grad_scaler=precision == "fp16")
    if precision == "int8":
        return StepSetup(after_step=lambda m: m.round_(), element_bytes=_int8_sizes(model))
    if precision in FP8:
        return StepSetup(fp8=FP8[precision], element_bytes=_fp8_sizes)
    return StepSetup()


def _fp8_sizes(kind: str, t: torch.Tensor) -> int | None:
    return 1 if kind in ("fp8", "fp8-grad") else None


def _int8_sizes(model: nn.Module):
    layers = model.layers().values()
    weights = {id(layer.weight) for layer in layers}

    def element_bytes(kind: str, t: torch.Tensor) -> int:
        if kind == "param":
            return 1 if id(t) in weights else 4
        if kind in ("buffer", "grad", "state"):
            return 4
        if kind == "weight-copy" or t.dim() == 0:
            return 0
        return 1

    return element_bytes


# ---------------------------------------------------------------- the int8 estimate


@dataclass(frozen=True)
class Int8Op:
    """One operator of the int8 graph, with the sizes it ran on."""

    path: str
    kind: str  # conv, linear, head, add, avgpool, avgpool-window, maxpool, act, flatten, input
    args: tuple[int, ...]  # indices of the operators it reads (-1: the model's input)
    in_numel: int  # elements of its first input
    out_numel: int
    out_shape: tuple[int, ...]
    weight: str | None  # parameter names of a layer or head
    bias: str | None
    macs: int


_KINDS = {"QAdd": "add", "QMaxPool": "maxpool", "QAct": "act", "QFlatten": "flatten",
          "QInput": "input"}


def _kind(module: nn.Module, layer_paths: set[str], path: str) -> str:
    if path in layer_paths:
        return "linear" if module.kind == "linear" else "conv"
    if isinstance(module, nn.Linear):
        return "head"
    name = type(module).__name__
    if name == "QAvgPool":
        return "avgpool" if module.kernel is None else "avgpool-window"
    return _KINDS.get(name, "other")


def int8_ops(model: nn.Module, x: torch.Tensor) -> list[Int8Op]:
    """The operators of an Int8Model in the order they ran, with their tensor sizes.

    The int8 graph's integer arithmetic reads values (overflow checks, rounding), so it
    cannot run on the meta device: the sizes come from one no-grad forward on zeros.
    """
    layer_paths = set(model.layers())
    ops: list[Int8Op] = []
    made: dict[int, int] = {}  # id of an operator's output -> its index
    handles = []

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor, path: str) -> None:
        kind = _kind(mod, layer_paths, path)
        tensors = [a for a in inputs if isinstance(a, torch.Tensor)]
        param = kind in ("conv", "linear", "head")
        ops.append(Int8Op(
            path, kind, tuple(made.get(id(a), -1) for a in tensors), tensors[0].numel(),
            output.numel(), tuple(output.shape), f"{path}.weight" if param else None,
            f"{path}.bias" if param and mod.bias is not None else None,
            output.numel() * mod.weight[0].numel() if param else 0))
        made[id(output)] = len(ops) - 1

    for path, module in model.named_modules():
        if path and (hasattr(module, "out_scale") or isinstance(module, nn.Linear)):
            handles.append(module.register_forward_hook(
                lambda m, i, o, path=path: hook(m, i, o, path)))
    try:
        with torch.no_grad():
            check_logits(model(torch.zeros_like(x)), x.shape, "the memory model")
    finally:
        for h in handles:
            h.remove()
    return ops


@dataclass(frozen=True)
class Int8Step:
    """The int8 estimate: bytes per category, frozen bytes, MACs, per-operator saves."""

    by_category: dict[str, int]
    frozen_weight_bytes: int
    forward_macs: int
    backward_macs: int
    rows: tuple[tuple[Int8Op, int], ...]  # (operator, bytes kept for its backward)


def _int8_saves(op: Int8Op, flows_in: bool, trains_w: bool, trains_b: bool) -> int:
    """Elements (1 byte each) the step keeps for the backward of ``op``: a conv keeps its
    input whenever anything of it needs a gradient, a linear (addmm) only for its weight's
    gradient; every requantizing operator keeps its clamp mask; pools and max pools keep
    their input (and max pools their window positions)."""
    if op.kind in ("conv", "linear"):
        anything = flows_in or trains_w or trains_b
        keep_in = anything if op.kind == "conv" else trains_w
        return op.in_numel * keep_in + op.out_numel * anything
    if op.kind == "head":
        return op.in_numel * trains_w
    if not flows_in:
        return 0
    return {"add": op.out_numel, "act": op.out_numel, "avgpool": op.out_numel,
            "avgpool-window": op.in_numel + op.out_numel,
            "maxpool": op.in_numel + op.out_numel}.get(op.kind, 0)


def int8_step(model: nn.Module, x: torch.Tensor, trainable: frozenset[str],
              optimizer_copies: int, adam: bool) -> Int8Step:
    """Bytes of one int8-graph step by the rules of the module docstring."""
    ops = int8_ops(model, x)
    named = dict(model.named_parameters())
    layer_weights = {f"{p}.weight" for p in model.layers()}
    sizes = {n: p.numel() * (1 if n in layer_weights else 4) for n, p in named.items()}
    buffers = 4 * sum(b.numel() for b in model.buffers())
    flows: list[bool] = []  # per operator: a gradient flows out of it
    rows, bwd = [], 0
    for op in ops:
        flows_in = op.kind != "input" and any(flows[a] for a in op.args if a >= 0)
        tw, tb = op.weight in trainable, op.bias in trainable
        flows.append(flows_in or tw or tb)
        rows.append((op, _int8_saves(op, flows_in, tw, tb)))
        bwd += backward_macs(op.macs, weight_grad=tw, input_grad=flows_in)
    trained = [n for n in named if n in trainable]
    grads = sum(4 * named[n].numel() for n in trained)
    by_category = {"weights": sum(sizes.values()) + buffers, "gradients": grads,
                   "optimizer": optimizer_copies * grads + (4 * len(trained) if adam else 0),
                   "activations": sum(n for _, n in rows)}
    frozen = sum(sizes[n] for n in named if n not in trainable) + buffers
    return Int8Step(by_category, frozen, sum(op.macs for op in ops), bwd, tuple(rows))
