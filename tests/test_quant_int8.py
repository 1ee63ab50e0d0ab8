"""The int8 graph against independent references (its fixed-point arithmetic has its own,
test_quant_fixed_point.py): torch's own int64 convolution, and the BN-folded float model run in
float64 with fake quantization at PyTorch's observed qparams (``Reference``, also used by
test_quant_qas.py)."""

from __future__ import annotations

import copy
import math
import operator

import pytest
import torch
from torch import fx, nn
from torch.ao.quantization.observer import MinMaxObserver
from torch.nn import functional as F

import odtkit as odt
from odtkit.quant import fold_bn_, to_int8

EPS = torch.finfo(torch.float32).eps
ACTS = (nn.ReLU, nn.ReLU6)
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d)
SHAPES = {"mcunet-tiny": (3, 12, 12), "mbv2-tiny": (3, 12, 12), "ds-cnn": (10, 25),
          "resnet8": (3, 12, 12), "mlp": (1, 8, 8)}


# ----------------------------------------------------------- the float reference

def act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 from an observed range, by PyTorch's ``MinMaxObserver`` (the range
    widened to include 0, scale (max - min) / 255 in float32 arithmetic)."""
    observer = MinMaxObserver(dtype=torch.qint8, quant_min=-128, quant_max=127)
    observer(torch.tensor([lo, hi], dtype=torch.float32))
    scale, zero_point = observer.calculate_qparams()
    return float(scale), int(zero_point)


def weight_scales(w: torch.Tensor) -> torch.Tensor:
    return torch.clamp(w.detach().abs().flatten(1).amax(1).float() / 127, min=EPS)


def fake_quantize64(v: torch.Tensor, scale: float, zero_point: int,
                    pool_count: int | None = None) -> torch.Tensor:
    """``torch.fake_quantize_per_tensor_affine(v, scale, zero_point, -128, 127)`` (round half
    to even, clamp, straight-through gradient where the integer is in range) with v / s and
    (q - z) * s in float64, where PyTorch's kernel multiplies by a float32 1 / s: that
    moves y / s by up to 2^-24 of itself, enough to flip a near-tie to the other integer.

    ``pool_count``: v is the mean of ``pool_count`` values on the grid, so v / s + z is a
    multiple of 1 / pool_count, taken exactly, and lies on an exact half for one window in
    pool_count when that is even. The float model is then as far from either integer; ties
    go as TFLite's integer pool sends them (half away from zero of the stored integers)."""
    if pool_count is None:
        q = torch.round(v.detach() / scale) + zero_point
    else:
        mean = torch.round((v.detach() / scale + zero_point) * pool_count) / pool_count
        q = torch.sign(mean) * torch.floor(mean.abs() + 0.5)
    inside = (q >= -128) & (q <= 127)
    out = (torch.clamp(q, -128, 127) - zero_point) * scale
    return out + (v - v.detach()) * inside


def integers_of(fake: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """The integers q - z of a float32 fake-quantized tensor, whose (q - z) * s is float32."""
    return torch.round(fake.double() / scale)


class Reference:
    """fold_bn_ on a copy, traced with fx, run in float64 with fake quantization: weights
    per channel (narrow range: PyTorch's per-channel op picks the integers), biases on the
    s_w * s_x grid, the input as the graph quantizes it (PyTorch's op on float32), every
    conv/linear/add output (or the ReLU/ReLU6 that alone consumes it) per tensor with its
    own calibrated range, pools with their input's (``fake_quantize64``). Quantized values
    are dequantized exactly in float64 and y / s is taken in float64, so the y / s the
    reference rounds carries float64 rounding errors only; ranges and qparams come from
    PyTorch's ``MinMaxObserver``. ``leaves[path] = (w, b)`` replaces a layer's weight
    and bias (float, on the grid); ``forced`` (a list, in graph order, one per operator the
    int8 graph has) replaces each quantized value in the forward only (straight through)."""

    def __init__(self, model: nn.Module, calibration: torch.Tensor) -> None:
        self.gm = fx.symbolic_trace(fold_bn_(copy.deepcopy(model).eval()))
        self.mods = dict(self.gm.named_modules())
        self.leaves: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.ranges: dict[str, tuple[float, float]] = {}
        with torch.no_grad():
            self._run(calibration.float(), observe=True)  # as to_int8 observes: float32
        self.points = self._points()

    def _kind(self, n: fx.Node) -> type | None:
        return type(self.mods[n.target]) if n.op == "call_module" else None

    def _points(self) -> set[str]:
        points = set()
        for n in self.gm.graph.nodes:
            if n.op == "placeholder" or self._kind(n) in LAYERS or n.target is operator.add:
                end = n
                while len(end.users) == 1 and self._kind(next(iter(end.users))) is nn.Identity:
                    end = next(iter(end.users))
                users = list(end.users)
                fused = len(users) == 1 and self._kind(users[0]) in ACTS
                points.add(users[0].name if fused else n.name)
        return points

    def _layer(self, path: str, x: torch.Tensor, s_x: float) -> torch.Tensor:
        m = self.mods[path]
        if path in self.leaves:
            w, b = self.leaves[path]
        else:
            s_w = weight_scales(m.weight)
            zero = torch.zeros(len(s_w), dtype=torch.int32)
            fake = torch.fake_quantize_per_channel_affine(m.weight.detach().float(), s_w, zero,
                                                          0, -127, 127)
            s_c = s_w.double().reshape(-1, *([1] * (fake.dim() - 1)))
            w = integers_of(fake, s_c) * s_c
            bias = m.bias.detach() if m.bias is not None else torch.zeros(len(s_w))
            unit = s_w.double() * s_x
            b = torch.round(bias.double() / unit) * unit
        return F.linear(x, w, b) if isinstance(m, nn.Linear) else m._conv_forward(x, w, b)

    def _run(self, x, observe=False, forced=None):
        env, qp, forced = {}, {}, list(forced or [])
        for n in self.gm.graph.nodes:
            if n.op == "output":
                return env[n.args[0].name], qp.get(n.args[0].name), qp
            kind = self._kind(n)
            args = fx.node.map_arg(n.args, lambda a: env[a.name])
            if n.op == "placeholder":
                out = x
            elif not observe and kind in LAYERS:
                out = self._layer(n.target, args[0], qp[n.args[0].name][0])
            elif n.op == "call_module":
                out = self.mods[n.target](*args)
            else:
                out = n.target(*args)
            if observe:
                lo, hi = (float(v) for v in torch.aminmax(out))
                old = self.ranges.get(n.name, (lo, hi))
                self.ranges[n.name] = (min(old[0], lo), max(old[1], hi))
            elif n.op == "placeholder":  # as QInput: float32 x times float32 1 / s
                qp[n.name] = s, z = act_qparams(*self.ranges[n.name])
                out = integers_of(torch.fake_quantize_per_tensor_affine(x.float(), s, z, -128,
                                                                        127), s) * s
            elif n.name in self.points:
                qp[n.name] = act_qparams(*self.ranges[n.name])
                out = fake_quantize64(out, *qp[n.name])
            elif kind in POOLS:
                qp[n.name] = qp[n.args[0].name]
                out = fake_quantize64(out, *qp[n.name], pool_count=pool_count(self.mods[
                    n.target], args[0]))
            elif n.args and isinstance(n.args[0], fx.Node):  # shape ops keep their input's
                qp[n.name] = qp.get(n.args[0].name)
            if not observe and forced and (n.name in self.points or kind in POOLS
                                           or kind is nn.Flatten):
                self.unforced.append(out.detach())
                out = out + (forced.pop(0).reshape(out.shape) - out).detach()
            env[n.name] = out
        raise AssertionError("graph without output")

    def __call__(self, x, forced=None):
        """(float64 output, its (scale, zero point), (scale, zero point) by node name).
        With ``forced``, ``self.unforced`` keeps what each operator computed itself."""
        self.unforced: list[torch.Tensor] = []
        return self._run(x.double(), forced=forced)

    def integers(self, x: torch.Tensor) -> torch.Tensor:
        out, (s, z), _ = self(x)
        return torch.round(out / s) + z


def pool_count(pool: nn.Module, x: torch.Tensor) -> int:
    """How many inputs each output of an average pool (padding 0) averages."""
    if isinstance(pool, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        return math.prod(x.shape[2:])  # to size 1, as to_int8 converts
    kernel = pool.kernel_size
    return math.prod(kernel) if isinstance(kernel, tuple) else kernel ** (x.dim() - 2)


def zoo_model(name: str, seed: int = 1) -> nn.Module:
    """A zoo model with non-trivial BatchNorm statistics and affine parameters."""
    model = odt.models.create(name, input_shape=SHAPES[name], seed=seed)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.2, generator=g)
    return model


def inputs(name: str, n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *SHAPES[name], generator=torch.Generator().manual_seed(seed))


def dequantized_outputs(int8: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every int8 operator's output (dequantized, float64) in program order."""
    outs, handles = [], []
    for path, (s, z) in int8.activation_qparams().items():
        def hook(module, args, out, s=s, z=z):
            outs.append((out.detach() - z) * s)
        handles.append(int8.get_submodule(path).register_forward_hook(hook))
    int8(x)
    for h in handles:
        h.remove()
    return outs


# ----------------------------------------------------------- conversion


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_operator_is_within_one_step_of_the_fake_quantized_float_model(name):
    """Each int8 operator (input quantization, conv/linear with fused activation, residual
    add, pool, flatten), fed the int8 graph's own input, against the float operator with
    PyTorch's fake quantization on the same input: at most one output step apart."""
    model = zoo_model(name)
    x = inputs(name)
    int8, ref = to_int8(model, x), Reference(model, x)
    ours = dequantized_outputs(int8, x)
    ref(x, forced=ours)
    assert len(ref.unforced) == len(ours) == len(int8.activation_qparams())
    for (path, (scale, _)), theirs, mine in zip(int8.activation_qparams().items(),
                                                ref.unforced, ours, strict=True):
        steps = (torch.round(theirs.reshape(mine.shape) / scale) - torch.round(mine / scale)).abs()
        assert float(steps.max()) <= 1.0, path


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_zoo_model_end_to_end_is_close_to_its_fake_quantized_float_model(name):
    """Run freely, on the calibration inputs and on others, the int8 graph (one rounding
    per requantization, the default) gives logits within one step of the float model's
    (measured: equal, on every zoo model)."""
    model = zoo_model(name)
    x = inputs(name)
    int8, ref = to_int8(model, x), Reference(model, x)
    assert int8.requantize == "single"
    for batch in (x, inputs(name, 64, seed=1)):
        steps = (int8.forward_int8(batch).values.double() - ref.integers(batch)).abs()
        assert float(steps.max()) <= 1.0 and float(steps.mean()) < 0.01
    got = int8.forward_int8(x)
    assert got.values.dtype == torch.int8
    _, (scale, zp), _ = ref(x)
    assert float(got.scale) == scale and int(got.zero_point) == zp  # MinMaxObserver's, exactly
    logits = int8(x)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits.double(), (got.values.double() - zp) * scale)
    folded = fold_bn_(copy.deepcopy(model).eval())
    for path, layer in int8.layers().items():
        assert torch.allclose(layer.w_scale, weight_scales(folded.get_submodule(path).weight))


def test_double_rounding_steps_travel_to_the_logits():
    """requantize="double" (TFLite's default build) makes the same graph, integers, scales
    and multipliers alike; only its rounding differs. Its flips of near-ties add up over
    the layers: measured, 25% of resnet8's logits one or two steps off the float model's
    (up to 5 steps on digits-shift), where one rounding leaves them equal."""
    model, x = zoo_model("resnet8"), inputs("resnet8")
    one, two = to_int8(model, x), to_int8(model, x, requantize="double")
    assert two.requantize == "double" and "requantize='double'" in repr(two)
    first, second = one.state_dict(), two.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    want = Reference(model, x).integers(x)
    steps = [(g.forward_int8(x).values.double() - want).abs() for g in (one, two)]
    assert float(steps[0].max()) <= 1.0 and float(steps[0].mean()) < 0.01
    assert float(steps[1].mean()) > 0.1


def test_each_layer_differs_from_the_float_layer_only_where_double_rounding_can():
    """Given the same int8 input, a layer's integers equal round(y / s) + z of the float
    layer, except where TFLite's two roundings (the high multiply to an integer, then the
    rounding shift by r bits) can land on the other side: within 2^-(r+1) of a half."""
    model = zoo_model("mcunet-tiny")
    x = inputs("mcunet-tiny", 64)
    int8, ref = to_int8(model, x, requantize="double"), Reference(model, x)
    seen = {}
    for path, layer in int8.layers().items():
        layer.register_forward_hook(lambda m, i, o, p=path: seen.__setitem__(p, (i[0], o)))
    int8.forward_int8(x)
    for path, layer in int8.layers().items():
        q_in, q_out = seen[path]
        s_x, z_x, s, z = float(layer.in_scale), int(layer.in_zp), float(layer.out_scale), int(layer.out_zp)
        y = ref._layer(path, (q_in - z_x) * s_x, s_x)
        y = torch.clamp(y, 0.0, 6.0) if layer.act == "relu6" else y
        want = torch.round(torch.fake_quantize_per_tensor_affine(y, s, z, -128, 127) / s) + z
        diff = (want - q_out).abs()
        assert float(diff.max()) <= 1.0, path
        right = torch.clamp(-layer.shift, min=0).double()
        window = (2.0 ** -(right + 1)).reshape(1, -1, *([1] * (y.dim() - 2)))
        off_half = ((y / s) - torch.floor(y / s) - 0.5).abs()  # distance of y/s from a half
        assert bool((off_half[diff > 0] <= (window.expand_as(y) + 1e-6)[diff > 0]).all()), path


def test_accumulation_is_exact_against_torch_integer_convolution():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1),
                          nn.Flatten(), nn.Linear(16 * 25, 5))
    int8 = to_int8(model, torch.randn(8, 4, 5, 5))
    x = torch.randint(-128, 128, (3, 4, 5, 5)).double()
    g = torch.Generator().manual_seed(0)
    for big_bias in (False, True):    # below 2^24: float32 accumulation; above: float64
        for path, layer in int8.layers().items():
            with torch.no_grad():
                layer.weight.copy_(torch.randint(-127, 128, layer.weight.shape, generator=g))
                layer.bias.copy_(torch.randint(-2**30 if big_bias else -1000, 2**30 if big_bias
                                               else 1000, layer.bias.shape, generator=g))
            xin = x if path == "0" else torch.randint(-128, 128, (3, *_in_shape(path)), generator=g).double()
            got = layer.accumulate(xin)
            xi, w, b = xin.long() - int(layer.in_zp), layer.weight.long(), layer.bias.long()
            want = (F.linear(xi, w, b) if layer.kind == "linear"
                    else F.conv2d(xi, w, b, **layer.conv_args))
            assert want.dtype == torch.int64 and torch.equal(got.long(), want), (path, big_bias)


def _in_shape(path: str) -> tuple[int, ...]:
    return {"2": (8, 5, 5), "3": (8, 5, 5), "5": (16 * 25,)}[path]


def test_pretrained_mcunet_keeps_its_accuracy_on_digits_shift():
    """On real data too, the logits stay within one step of the float model's (measured:
    equal; with requantize="double", up to 4 steps off)."""
    task = odt.datasets.load("digits-shift")
    model = odt.models.create("mcunet-tiny", pretrained=True)
    fp32 = odt.training.evaluate(model, task.x_test, task.y_test)
    for head in ("int8", "float"):
        int8 = to_int8(model, task.x_train[:256], head=head)
        acc = odt.training.evaluate(int8, task.x_test, task.y_test)
        assert abs(acc - fp32) <= 0.03, (head, acc, fp32)  # measured: 0.506 fp32, 0.517 int8
    want = Reference(model, task.x_train[:256]).integers(task.x_test)
    steps = (to_int8(model, task.x_train[:256]).forward_int8(task.x_test).values - want).abs()
    assert float(steps.max()) <= 1.0 and float(steps.mean()) < 0.01


def test_float_head_reads_the_dequantized_int8_features():
    model = zoo_model("mbv2-tiny")
    x = inputs("mbv2-tiny")
    int8 = to_int8(model, x, head="float")
    features = int8.forward_int8(x).dequantize()                # (B, features)
    want = F.linear(features, model.classifier.weight, model.classifier.bias)
    assert torch.allclose(int8(x), want, atol=1e-5)
    assert "classifier" not in int8.layers()


def test_a_loaded_state_replaces_scales_and_multipliers():
    model = zoo_model("ds-cnn")
    x = inputs("ds-cnn")
    first, second = to_int8(model, x), to_int8(model, 3 * x)   # other ranges, other scales
    first(x)                                                   # multipliers cached
    first.load_state_dict(second.state_dict())
    assert torch.equal(first.forward_int8(x).values, second.forward_int8(x).values)


def test_to_int8_leaves_the_model_alone():
    model = zoo_model("resnet8")
    before = copy.deepcopy(model.state_dict())
    to_int8(model, inputs("resnet8"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.stem[1], nn.BatchNorm2d)


# ----------------------------------------------------------- errors


def test_unsupported_module_is_named_with_its_path_and_type():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    with pytest.raises(ValueError, match=r"module '1' \(GELU.*supported: Conv1d"):
        to_int8(model, torch.randn(4, 1, 8, 8))


def test_unsupported_operation_names_its_module():
    class Doubler(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return torch.cat([self.conv(x), self.conv(x)], dim=1)

    model = nn.Sequential(Doubler(), nn.Flatten())
    with pytest.raises(ValueError, match=r"'cat' in module '0' \(Doubler\)"):
        to_int8(model, torch.randn(2, 1, 6, 6))


def test_batchnorm_that_cannot_be_folded_is_named():
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match=r"'0' \(BatchNorm2d\).*fold_bn_"):
        to_int8(model, torch.randn(2, 1, 6, 6))


def test_calibration_inputs_are_checked():
    model = odt.models.create("mlp")
    with pytest.raises(ValueError, match=r"shape \(4, 1, 9, 9\).*\(N, 1, 8, 8\)"):
        to_int8(model, torch.randn(4, 1, 9, 9))
    with pytest.raises(TypeError, match="float tensor"):
        to_int8(model, torch.zeros(4, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="nan or inf"):
        to_int8(model, torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="Did you mean 'float'"):
        to_int8(model, torch.randn(4, 1, 8, 8), head="flaot")
    with pytest.raises(ValueError, match=r"requantize 'singel'. Did you mean 'single'\? Valid choices: single, double"):
        to_int8(model, torch.randn(4, 1, 8, 8), requantize="singel")


def test_float_head_needs_a_final_linear():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU())
    with pytest.raises(ValueError, match="head='float' needs.*nn.Linear"):
        to_int8(model, torch.randn(4, 1, 8, 8), head="float")


# ----------------------------------------------------------- integers stay integers


def test_round_nearest_drops_small_updates_and_stochastic_keeps_them_on_average():
    int8 = to_int8(odt.models.create("mlp"), torch.randn(16, 1, 8, 8))
    layer = int8.layers()["1"]
    start = layer.weight.detach().clone()
    inner = start.abs() < 120
    with torch.no_grad():
        layer.weight.add_(0.3)
    int8.round_("nearest")
    assert torch.equal(layer.weight, start)            # 0.3 of a unit: gone
    moved = []
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        with torch.no_grad():
            layer.weight.copy_(start + 0.3)
        int8.round_("stochastic", generator=g)
        moved.append((layer.weight.detach() - start)[inner])
    mean = torch.stack(moved).mean()
    assert set(torch.stack(moved).unique().tolist()) <= {0.0, 1.0}
    assert 0.28 < float(mean) < 0.32                   # unbiased: 0.3 on average


def test_round_clamps_and_forward_refuses_non_integers():
    int8 = to_int8(odt.models.create("mlp"), torch.randn(16, 1, 8, 8))
    layer = int8.layers()["3"]
    with torch.no_grad():
        layer.weight.add_(0.25)
        layer.weight[0, 0] = 500.0
        layer.bias[0] = 3e10
    with pytest.raises(ValueError, match=r"layer '3'.*not integers in \[-127, 127\].*round_"):
        int8(torch.randn(2, 1, 8, 8))
    int8.round_()
    assert layer.weight[0, 0].item() == 127.0 and layer.bias[0].item() == 2**31 - 1
    assert torch.equal(layer.weight, layer.weight.round())
    with pytest.raises(OverflowError, match="layer '3': the int32 accumulator overflows"):
        int8(torch.randn(2, 1, 8, 8))
    with torch.no_grad():
        layer.bias[0] = 0.0
    assert int8(torch.randn(2, 1, 8, 8)).shape == (2, 10)
