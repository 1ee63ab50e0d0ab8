"""The int8 graph a microcontroller runs, and trains: ``to_int8`` converts a float model.

    int8 = to_int8(model, task.x_train[:256])      # BN folded on a copy; model untouched
    logits = int8(x)                               # float in, dequantized logits out
    q = int8.forward_int8(x)                       # QTensor: the integer output itself

Conventions (TFLite int8, as TFLite Micro and CMSIS-NN run it):

- weights int8 in [-127, 127], symmetric, one scale s_W per output channel;
- activations int8 in [-128, 127] with one scale and zero point per tensor, from the
  min/max observed on ``calibration_inputs`` (widened to include 0) at the output of every
  conv/linear (after its fused ReLU/ReLU6), residual add and the input; pooling, flatten
  and max pool keep their input's quantization;
- biases int32 in units of s_W * s_x, accumulation in int32 (emulated exactly: in float32
  where every partial sum stays below 2^24, else float64),
  requantization by a Q31 multiplier and shift per output channel, then the zero point
  and a clamp that also applies a fused ReLU/ReLU6. ``requantize`` picks the rounding of
  both engines' two builds (``_fixed_point``): "single" (default), x * M rounded once, so
  the logits follow the fake-quantized float model within one output step (on the zoo:
  equal); "double", TFLite's default ``MultiplyByQuantizedMultiplier`` bit for bit, whose
  second rounding flips 0.01% to 0.8% of a layer's outputs, steps that add up over the
  layers (on the zoo: logits up to 5 steps off);
- residual adds as TFLite's integer ADD; average pools round (sum +- n/2) / n.

Trainable tensors are the integers themselves (``weight`` float32, ``bias`` float64, both
integer-valued), so gradients come in integer units; see ``odtkit.quant.qas``.
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from .._checks import check_choice, check_positive_int
from ._fixed_point import INT32_MAX, INT32_MIN, REQUANTIZE
from ._int8_ops import (
    WEIGHT_QMAX,
    FloatHead,
    QAct,
    QAdd,
    QAvgPool,
    QFlatten,
    QInput,
    QLayer,
    QMaxPool,
    QOp,
)
from .qat import fold_bn_
from .quantizers import ROUNDINGS, QTensor, calculate_qparams, quantize

__all__ = ["to_int8", "Int8Model", "HEADS", "REQUANTIZE", "SUPPORTED"]

HEADS = ("int8", "float")
SUPPORTED = ("Conv1d, Conv2d (groups, depthwise), Linear, ReLU, ReLU6, Flatten, "
             "AvgPool1d/2d (padding 0), AdaptiveAvgPool1d/2d to size 1, MaxPool1d/2d, "
             "Identity, Dropout, BatchNorm right after a conv in an nn.Sequential (folded), "
             "and residual adds x + y")
_ALIASES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_ACTS: dict[type[nn.Module], str] = {nn.ReLU6: "relu6", nn.ReLU: "relu"}
_LAYERS = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Linear: "linear"}
INPUT_PATH = "input_quant"


class Int8Model(nn.Module):
    """The converted graph: integer operators placed at their float model's module paths
    (``stem.0`` is the QLayer of conv ``stem.0``), run in program order.

    ``forward`` takes float inputs and returns float logits (dequantized int8 logits, or a
    float head's output), so ``odt.training.evaluate`` and any loss work unchanged.
    ``requantize`` is the rounding its layers and adds requantize with ("single" or
    "double").
    """

    def __init__(self, ops: list[tuple[str, nn.Module, tuple[int, ...]]],
                 input_shape: tuple[int, ...] | None, requantize: str) -> None:
        super().__init__()
        self.requantize = requantize
        self._program: list[tuple[str, tuple[int, ...]]] = []
        for path, op, args in ops:
            path = _place(self, path, op)
            self._program.append((path, args))
        self.input_shape = input_shape
        self._float_head = isinstance(ops[-1][1], FloatHead)

    def _run(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        values: list[torch.Tensor] = []
        for path, args in self._program[:stop]:
            op = self.get_submodule(path)
            values.append(op(*(values[i] if i >= 0 else x for i in args)))
        return values[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run(x, len(self._program))
        if self._float_head:
            return out
        last = self.get_submodule(self._program[-1][0])
        return ((out - last.out_zp.double()) * last.out_scale.double()).to(torch.float32)

    @torch.no_grad()
    def forward_int8(self, x: torch.Tensor) -> QTensor:
        """The last int8 tensor (the logits, or the features a float head reads) as a
        QTensor: int8 values, per-tensor scale and zero point."""
        stop = len(self._program) - self._float_head
        out = self._run(x, stop)
        op = self.get_submodule(self._program[stop - 1][0])
        return QTensor(out.to(torch.int8), op.out_scale.clone(), op.out_zp.to(torch.int32),
                       bits=8, symmetric=False)

    def layers(self) -> dict[str, QLayer]:
        """The quantized conv/linear layers by module path, in program order."""
        return {path: op for path, _ in self._program
                if isinstance(op := self.get_submodule(path), QLayer)}

    def activation_qparams(self) -> dict[str, tuple[float, int]]:
        """(scale, zero point) of every int8 operator's output, by module path."""
        return {path: (float(op.out_scale), int(op.out_zp)) for path, _ in self._program
                if isinstance(op := self.get_submodule(path), QOp)}

    @torch.no_grad()
    def round_(self, rounding: str = "nearest",
               generator: torch.Generator | None = None) -> Int8Model:
        """Re-round every layer's weights to integers in [-127, 127] and biases to int32, in
        place: what storing them as int8/int32 after an optimizer step does. "nearest"
        drops any change under half a unit; "stochastic" rounds up with probability equal
        to the fraction, so small updates survive on average. Returns the model."""
        check_choice("rounding", rounding, ROUNDINGS)
        for layer in self.layers().values():
            for p, low, high in ((layer.weight, -WEIGHT_QMAX, WEIGHT_QMAX),
                                 (layer.bias, INT32_MIN, INT32_MAX)):
                if rounding == "nearest":
                    v = torch.round(p)
                else:
                    v = torch.floor(p + torch.rand(p.shape, generator=generator, dtype=p.dtype))
                p.copy_(torch.clamp(v, low, high))
        return self


def to_int8(model: nn.Module, calibration_inputs: torch.Tensor, *, head: str = "int8",
            requantize: str = "single", batch_size: int = 256) -> Int8Model:
    """Convert a float model into the int8 graph an integer-only engine runs.

    The model is not changed: a copy in eval mode has its BatchNorms folded (``fold_bn_``)
    first. Activation ranges are observed on ``calibration_inputs`` (N, *input_shape), run
    through the folded float model ``batch_size`` samples at a time. ``head="float"`` keeps
    the final nn.Linear in float, fed by dequantized int8 features (as the paper's code).
    ``requantize="single"`` rounds each requantization once (TFLITE_SINGLE_ROUNDING,
    CMSIS_NN_USE_SINGLE_ROUNDING); ``"double"`` as both engines' default build.
    """
    check_choice("head", head, HEADS)
    check_choice("requantize", requantize, REQUANTIZE)
    check_positive_int("batch_size", batch_size)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    folded = fold_bn_(copy.deepcopy(model).eval())
    _check_calibration(folded, calibration_inputs)
    graph = _trace(folded)
    ranges = _observe(graph, calibration_inputs, batch_size)
    ops = _Builder(graph, ranges, head, requantize).build()
    return Int8Model(ops, getattr(model, "input_shape", None), requantize)


def _check_calibration(model: nn.Module, x: object) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"calibration_inputs must be a float tensor (N, *input_shape), got "
                        f"{got}; pass a few hundred training inputs, e.g. task.x_train[:256]")
    shape = getattr(model, "input_shape", None)
    if x.dim() < 2 or len(x) == 0 or (shape is not None and tuple(x.shape[1:]) != tuple(shape)):
        want = f"(N, {', '.join(map(str, shape))})" if shape is not None else "(N, ...)"
        raise ValueError(f"calibration_inputs has shape {tuple(x.shape)}, but the model takes "
                         f"{want} with N >= 1: pass a batch of the model's inputs, e.g. "
                         "task.x_train[:256]")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("calibration_inputs holds nan or inf; pass finite inputs")


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as err:
        raise ValueError(
            f"to_int8 cannot trace {type(model).__name__} into a fixed graph ({type(err).__name__}: "
            f"{err}); it converts forwards made of: {SUPPORTED}") from err


class _Observer(fx.Interpreter):
    """Runs the folded float model and keeps the running (min, max) of every node's output."""

    def __init__(self, graph: fx.GraphModule) -> None:
        super().__init__(graph)
        self.ranges: dict[str, tuple[float, float]] = {}

    def run_node(self, n: fx.Node) -> object:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            lo, hi = (float(v) for v in torch.aminmax(out.detach()))
            old = self.ranges.get(n.name, (lo, hi))
            self.ranges[n.name] = (min(old[0], lo), max(old[1], hi))
        return out


@torch.no_grad()
def _observe(graph: fx.GraphModule, x: torch.Tensor, batch_size: int) -> dict[str, tuple[float, float]]:
    observer = _Observer(graph)
    for start in range(0, len(x), batch_size):
        observer.run(x[start:start + batch_size])
    return observer.ranges


def _place(root: nn.Module, path: str, module: nn.Module) -> str:
    """Put ``module`` at dotted ``path`` under ``root`` (containers made as needed); a taken
    path gets a suffix _1, _2, ... Returns the path used."""
    *parents, leaf = path.split(".")
    node = root
    for part in parents:
        if part not in node._modules:
            node.add_module(part, nn.Module())
        node = node._modules[part]
    name, k = leaf, 0
    while name in node._modules:
        k += 1
        name = f"{leaf}_{k}"
    node.add_module(name, module)
    return ".".join([*parents, name])


class _Builder:
    """Walks the traced graph once, fusing activations and building the int8 operators."""

    def __init__(self, graph: fx.GraphModule, ranges: dict[str, tuple[float, float]],
                 head: str, requantize: str) -> None:
        self.graph, self.ranges, self.head, self.requantize = graph, ranges, head, requantize
        self.modules = dict(graph.named_modules())
        self.ops: list[tuple[str, nn.Module, tuple[int, ...]]] = []
        self.step: dict[str, int] = {}       # node name -> index of the op computing it
        self.fused: set[str] = set()         # activation nodes folded into their producer
        self.head_node: fx.Node | None = None

    def build(self) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        nodes = list(self.graph.graph.nodes)
        output = next(n for n in nodes if n.op == "output")
        if self.head == "float":
            self.head_node = self._head(output.args[0])
        for node in nodes:
            if node.op == "placeholder":
                self._add(node, QInput(INPUT_PATH, *self._qparams(node.name)), (-1,))
            elif node.op == "call_module":
                self._module(node, self.modules[node.target])
            elif node.op == "call_function" and node.target in (operator.add, torch.add):
                self._residual(node)
            elif node.op in ("call_function", "call_method"):
                raise ValueError(f"to_int8 cannot convert the operation {_describe(node)}; "
                                 f"supported: {SUPPORTED}")
        if self.step[output.args[0].name] != len(self.ops) - 1:
            raise ValueError(f"the model's output comes from {_describe(output.args[0])}, "
                             "which is not its last operation; to_int8 converts forwards "
                             "whose every operation leads to the output")
        return self.ops

    def _qparams(self, name: str) -> tuple[float, int]:
        lo, hi = self.ranges[name]
        scale, zp = calculate_qparams(torch.tensor(lo), torch.tensor(hi), 8, symmetric=False)
        return float(scale), int(zp)

    def _out(self, index: int) -> tuple[float, int]:
        op = self.ops[index][1]
        return float(op.out_scale), int(op.out_zp)

    def _add(self, node: fx.Node, op: nn.Module, args: tuple[int, ...]) -> None:
        self.ops.append((op.path, op, args))
        self.step[node.name] = len(self.ops) - 1

    def _arg(self, node: fx.Node, i: int = 0) -> int:
        arg = node.args[i]
        if not isinstance(arg, fx.Node):
            raise ValueError(f"to_int8 cannot convert {_describe(node)}: argument {i} is the "
                             f"constant {arg!r}, not a tensor of the graph")
        return self.step[arg.name]

    def _fusion(self, node: fx.Node) -> tuple[str | None, str]:
        """(fused activation or None, node whose float output the op's output stands for):
        the activation that is the only consumer, through Identity/Dropout, is fused."""
        end = node
        while len(end.users) == 1 and self._is(next(iter(end.users)), _ALIASES):
            end = next(iter(end.users))
        users = list(end.users)
        if len(users) == 1 and self._is(users[0], tuple(_ACTS)) and users[0] is not self.head_node:
            self.fused.add(users[0].name)
            return _ACTS[type(self.modules[users[0].target])], users[0].name
        return None, end.name

    def _is(self, node: fx.Node, types: tuple[type, ...]) -> bool:
        return node.op == "call_module" and type(self.modules[node.target]) in types

    def _module(self, node: fx.Node, m: nn.Module) -> None:
        path, kind = str(node.target), type(m)
        if kind in _ALIASES or node.name in self.fused:
            self.step[node.name] = self._arg(node)
        elif node is self.head_node:
            self._add(node, FloatHead(path, m, self._out(self._arg(node))), (self._arg(node),))
        elif kind in _LAYERS:
            self._layer(node, m, _LAYERS[kind])
        elif kind in _ACTS:
            self._add(node, QAct(path, self._out(self._arg(node)), _ACTS[kind]), (self._arg(node),))
        else:
            self._add(node, self._shape_op(path, m, self._out(self._arg(node))), (self._arg(node),))

    def _layer(self, node: fx.Node, m: nn.Module, kind: str) -> None:
        src = self._arg(node)
        s_x, z_x = self._out(src)
        act, range_node = self._fusion(node)
        s_y, z_y = self._qparams(range_node)
        qw = quantize(m.weight.detach().float(), bits=8, symmetric=True, axis=0)
        bias = m.bias.detach() if m.bias is not None else torch.zeros(m.weight.shape[0])
        b_int = torch.round(bias.double() / (qw.scale.double() * s_x)).clamp(INT32_MIN, INT32_MAX)
        conv_args = {} if kind == "linear" else {
            "stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}
        if kind != "linear" and m.padding_mode != "zeros":
            raise ValueError(f"to_int8 cannot convert {node.target!r} ({type(m).__name__}) with "
                             f"padding_mode={m.padding_mode!r}: only 'zeros' padding is supported")
        layer = QLayer(str(node.target), kind, qw.values.float(), b_int, qw.scale, (s_x, z_x),
                       (s_y, z_y), act, conv_args, self.requantize)
        self._add(node, layer, (src,))

    def _residual(self, node: fx.Node) -> None:
        if len(node.args) != 2 or node.kwargs:
            raise ValueError(f"to_int8 converts adds of two tensors, got {_describe(node)}")
        a, b = self._arg(node, 0), self._arg(node, 1)
        act, range_node = self._fusion(node)
        out = self._qparams(range_node)
        stack = list(node.meta.get("nn_module_stack", {}))
        path = f"{stack[-1]}.add" if stack and stack[-1] else "add"
        op = QAdd(path, (self._out(a), self._out(b)), out, act, self.requantize)
        self._add(node, op, (a, b))

    def _shape_op(self, path: str, m: nn.Module, qparams: tuple[float, int]) -> QOp:
        dims = 1 if isinstance(m, (nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.MaxPool1d)) else 2
        if isinstance(m, nn.Flatten):
            return QFlatten(path, qparams, m.start_dim, m.end_dim)
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            return QMaxPool(path, qparams, m)
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
            if all(s == 1 for s in size):
                return QAvgPool(path, qparams, dims)
        elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
            kernel, stride, padding = (_tuple(v, dims) for v in (m.kernel_size, m.stride, m.padding))
            if not any(padding) and not m.ceil_mode:
                return QAvgPool(path, qparams, dims, kernel, stride)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"to_int8 cannot convert {path!r} ({type(m).__name__}): fold_bn_ "
                             "folds only a BatchNorm right after a conv in an nn.Sequential; "
                             f"supported: {SUPPORTED}")
        raise ValueError(f"to_int8 cannot convert module {path!r} ({type(m).__name__}: {m}); "
                         f"supported: {SUPPORTED}")

    def _head(self, node: object) -> fx.Node:
        if not (isinstance(node, fx.Node) and self._is(node, (nn.Linear,))):
            got = _describe(node) if isinstance(node, fx.Node) else repr(node)
            raise ValueError(f"head='float' needs the model output to come straight from an "
                             f"nn.Linear, but it comes from {got}; use head='int8'")
        return node


def _tuple(v: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims


def _describe(node: fx.Node) -> str:
    """'<target> in module <path> (<type>)' for an error message."""
    stack = list(node.meta.get("nn_module_stack", {}).values())
    where = f" in module {stack[-1][0]!r} ({stack[-1][1].__name__})" if stack else ""
    target = getattr(node.target, "__name__", node.target)
    return f"{node.op} {target!r}{where}"

