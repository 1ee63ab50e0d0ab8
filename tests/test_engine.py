"""The lean engine against stock PyTorch: same loss and gradients, fewer saved bytes.

Saved bytes are measured through torch.autograd.graph.saved_tensors_hooks: unique
storages (by data_ptr) of the tensors autograd keeps, parameters and buffers excluded.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _saved import saved_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import odtkit as odt
from odtkit import engine, models

TOL = {"atol": 1e-5, "rtol": 1e-5}
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


# ---------------------------------------------------------------- small models


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetLike(nn.Module):
    """conv+BN+ReLU6 stem, inverted residuals (depthwise, residual adds), pool, linear."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU6())
        self.features = nn.Sequential(
            InvertedResidual(width, width, 1), InvertedResidual(width, 2 * width, 2),
            InvertedResidual(2 * width, 2 * width, 1), InvertedResidual(2 * width, 3 * width, 2),
            InvertedResidual(3 * width, 3 * width, 1))
        self.fc = nn.Linear(3 * width, classes)
        self.input_shape = (3, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.stem(x)).mean((2, 3)))


class Conv1dNet(nn.Module):
    """Conv1d with stride, dilation, 'same' padding of an even kernel, reflect padding."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(4, 8, 5, stride=2, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
            nn.Conv1d(8, 8, 4, padding="same", dilation=1, groups=8), nn.ReLU(),
            nn.Conv1d(8, 8, 3, padding=2, dilation=2, padding_mode="reflect"), nn.ReLU())
        self.fc = nn.Linear(8, 5)
        self.input_shape = (4, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).amax(2))


class FunctionalBlock(nn.Module):
    """Activations called as functions in forward (some in place), residual adds."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=3)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        z = F.relu6(x + y, inplace=True)
        z = F.hardtanh(self.conv2(z), -1.0, 2.5) + z.relu()
        w = self.bn2(self.conv2(z))
        w.relu_()
        return F.relu(w + x, inplace=True)


class FunctionalResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block1 = FunctionalBlock(6)
        self.block2 = FunctionalBlock(6)
        self.fc = nn.Linear(6, 4)
        self.input_shape = (3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(F.relu(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def mlp() -> nn.Module:
    m = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                      nn.Linear(16, 3))
    m.input_shape = (12,)
    return m


def depthwise_sequential() -> nn.Module:
    m = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 5, padding=4, dilation=2, groups=8, padding_mode="circular"),
        nn.BatchNorm2d(8), nn.Hardtanh(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    m.input_shape = (4, 8, 8)
    return m


SMALL = {
    "mobilenet-like": lambda: MobileNetLike(width=4),
    "conv1d": Conv1dNet,
    "mlp": mlp,
    "depthwise-seq": depthwise_sequential,
    "functional-residual": FunctionalResidual,
}


def build(name: str) -> nn.Module:
    if name.startswith("zoo:"):
        return models.create(name[4:], input_shape=_ZOO_SHAPES.get(name[4:]))
    torch.manual_seed(0)
    return SMALL[name]()


_ZOO_SHAPES = {"mcunet-tiny": (3, 16, 16), "mbv2-tiny": (3, 16, 16), "resnet8": (3, 16, 16)}
MODELS = [*SMALL, *(f"zoo:{n}" for n in models.names())]
SCHEMES = ["full", "last:2", "bias-only", "norm-only", "none"]
# conv nets of BN+ReLU blocks without stock ops that keep their input (pads, max)
TEN_X = {"mobilenet-like", "depthwise-seq", "zoo:mcunet-tiny", "zoo:mbv2-tiny", "zoo:resnet8",
         "zoo:ds-cnn"}


def run_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, torch.Tensor]:
    nbytes, loss = saved_bytes(model, lambda: F.cross_entropy(model(x), y))
    if loss.requires_grad:
        loss.backward()
    return nbytes, loss


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", MODELS)
def test_same_loss_and_gradients_as_stock(name: str, scheme: str, mode: str) -> None:
    model = build(name)
    # train: every module in train mode, norms on batch statistics; eval: all in eval mode
    plan = odt.plan(model, scheme, norm_stats="batch" if mode == "train" else None)
    stock = plan.apply_(copy.deepcopy(model))
    lean = odt.lean(model, plan)
    getattr(stock, mode)()
    getattr(lean, mode)()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, *model.input_shape, generator=gen)
    y = torch.randint(0, 3, (4,), generator=gen)
    stock_bytes, stock_loss = run_step(stock, x, y)
    lean_bytes, lean_loss = run_step(lean, x, y)
    assert torch.allclose(lean_loss, stock_loss, **TOL)
    lean_params = dict(lean.named_parameters())
    for pname, p in stock.named_parameters():
        q = lean_params[pname]
        if pname in plan.trainable:
            assert q.grad is not None and torch.allclose(q.grad, p.grad, **TOL), pname
        else:
            assert q.grad is None and p.grad is None, pname
    for (bname, a), b in zip(stock.named_buffers(), lean.buffers(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=1e-5), bname
    if scheme == "none":
        assert lean_bytes == stock_bytes == 0
    if scheme in ("bias-only", "norm-only", "none"):
        assert lean_bytes <= stock_bytes  # (a ReLU's mask may add to a kept input otherwise)
    if scheme == "bias-only" and mode == "eval" and name in TEN_X:
        assert lean_bytes * 10 <= stock_bytes


def every_other_channel(model: nn.Module) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Every conv/linear weight trains every other input channel (a depthwise conv: every
    other channel of its own)."""
    out = {}
    for name, m in model.named_modules():
        if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear):
            groups = getattr(m, "groups", 1)
            dim = 0 if groups > 1 and groups == m.in_channels else 1
            out[f"{name}.weight"] = (dim, tuple(range(0, m.weight.shape[dim], 2)))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_channel_sparse_plans_match_stock_masked_gradients(name: str) -> None:
    """A channel-sparse plan: gradients are stock autograd's with unselected entries zero,
    and the step keeps fewer bytes than the same plan without the selection."""
    model = build(name)
    dense = odt.plan(model, "full")
    plan = dense.with_channels(every_other_channel(model))
    stock = copy.deepcopy(model).train()
    lean = odt.lean(model, plan).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, *model.input_shape, generator=gen)
    y = torch.randint(0, 3, (4,), generator=gen)
    _, stock_loss = run_step(stock, x, y)
    lean_bytes, lean_loss = run_step(lean, x, y)
    dense_bytes, _ = run_step(odt.lean(model, dense).train(), x, y)
    assert torch.allclose(lean_loss, stock_loss, **TOL)
    masks, lean_params = plan.masks(), dict(lean.named_parameters())
    for pname, p in stock.named_parameters():
        grad = p.grad if pname not in masks else p.grad.masked_fill(~masks[pname], 0)
        assert torch.allclose(lean_params[pname].grad, grad, **TOL), pname
    assert lean_bytes < dense_bytes


def test_input_model_untouched_and_names_kept() -> None:
    model = build("functional-residual")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = odt.plan(model, "bias-only", norm_stats="batch")
    lean = odt.lean(model, plan)
    assert all(p.requires_grad for p in model.parameters())
    assert type(model.stem) is nn.Conv2d and "forward" not in model.__dict__
    assert type(lean.stem) is engine.LeanConv2d and isinstance(lean.stem, nn.Conv2d)
    assert lean.state_dict().keys() == model.state_dict().keys()
    lean.train()
    lean(torch.randn(2, 3, 8, 8))  # updates only the copy's running stats
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert engine.is_lean(lean) and not engine.is_lean(model)
    assert lean.lean_plan == plan


def test_copies_of_a_lean_model_train_their_own_parameters() -> None:
    lean = odt.lean(build("functional-residual"), "full")
    twin = copy.deepcopy(lean)
    twin(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(p.grad is None for p in lean.parameters())
    assert all(p.grad is not None for p in twin.parameters())
    again = odt.lean(twin, odt.plan(twin, "none"))  # a lean model can be re-planned
    assert all(not p.requires_grad for p in again.parameters())


def test_relean_drops_old_recompute_and_keeps_instance_forwards() -> None:
    model = build("mobilenet-like")

    def doubled(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.relu(type(module).forward(module, x), inplace=False) * 2

    model.stem.forward = functools.partial(doubled, model.stem)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    stock = copy.deepcopy(model)
    once = odt.lean(model, odt.plan(model, "full", recompute="blocks"))
    twice = odt.lean(once, odt.plan(once, "full"))
    plain = odt.lean(model, "full")
    results = [run_step(m, x, y) for m in (stock, once, twice, plain)]
    losses = [loss for _, loss in results]
    assert all(torch.allclose(loss, losses[0], **TOL) for loss in losses)
    assert results[1][0] < results[2][0] == results[3][0]  # recompute gone after re-lean
    assert stock.stem.forward.args[0] is stock.stem  # instance forward bound to its copy
    assert twice.stem.forward.args[0] is twice.stem


def test_functional_keyword_arguments_are_routed() -> None:
    class Keywords(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(input=x) + F.hardtanh(x, min_val=-2.0, max_val=3.0)

    assert layer_bytes(odt.lean(Keywords(), "none"), torch.randn(80)) == 2 * 10


# ---------------------------------------------------------------- saved bytes per layer


def layer_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    x = x.clone().requires_grad_(True) * 1.0  # not a leaf: in-place layers may run
    nbytes, out = saved_bytes(layer, lambda: layer(x))
    out.sum().backward()
    return nbytes


@pytest.mark.parametrize("weight_trains, bias_trains", [(False, False), (False, True),
                                                        (True, False), (True, True)])
def test_linear_and_conv_save_input_only_when_weight_trains(weight_trains, bias_trains):
    x_lin, x_conv = torch.randn(5, 7), torch.randn(2, 6, 5, 5)
    for layer, x in [(nn.Linear(7, 3), x_lin), (nn.Conv2d(6, 6, 3, groups=3), x_conv),
                     (nn.Conv1d(6, 4, 3, stride=2), x_conv[:, :, 0])]:
        layer.weight.requires_grad_(weight_trains)
        layer.bias.requires_grad_(bias_trains)
        lean = odt.lean(layer, odt.plan(layer, lambda n, p: p.requires_grad))
        want = x.numel() * 4 if weight_trains else 0
        assert layer_bytes(lean, x) == want
        # stock (measured, torch 2.x): a conv keeps its input whatever trains; a linear
        # keeps it only when its weight trains
        stock = x.numel() * 4 if weight_trains or isinstance(layer, nn.modules.conv._ConvNd) else 0
        assert layer_bytes(layer, x) == stock


def test_relu_saves_one_bit_per_element() -> None:
    relu = odt.lean(nn.ReLU(), "none")
    assert layer_bytes(relu, torch.randn(1000)) == 125
    assert layer_bytes(relu, torch.randn(10, 100)) == 125
    assert layer_bytes(odt.lean(nn.ReLU6(inplace=True), "none"), torch.randn(1001)) == 126
    assert layer_bytes(nn.ReLU(), torch.randn(1000)) == 4000  # stock keeps its output

    class Functional(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(x) + F.relu6(x) + torch.relu(x) + F.hardtanh(x)

    assert layer_bytes(odt.lean(Functional(), "none"), torch.randn(1000)) == 4 * 125


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm_saved_bytes(mode: str) -> None:
    x = torch.randn(4, 6, 5, 5)
    for weight_trains in (False, True):
        bn = getattr(nn.BatchNorm2d(6), mode)()
        bn.weight.requires_grad_(weight_trains)
        stats = "batch" if mode == "train" else "frozen"
        lean = odt.lean(bn, odt.plan(bn, lambda n, p: p.requires_grad, norm_stats=stats))
        if mode == "train":
            want = x.numel() * 4 + 2 * 6 * 4  # x_hat + mean + invstd
        else:
            want = x.numel() * 4 if weight_trains else 0
        assert layer_bytes(lean, x) == want


def test_nothing_saved_when_nothing_needs_grad() -> None:
    model = build("mobilenet-like")
    lean = odt.lean(model, "none")
    x = torch.randn(2, 3, 32, 32)
    nbytes, out = saved_bytes(lean, lambda: lean(x))
    assert nbytes == 0 and out.grad_fn is None


def test_mobilenet_bias_only_saves_ten_times_less(capsys: pytest.CaptureFixture) -> None:
    for name, model in [("MobileNet-like", MobileNetLike(width=8)),
                        ("zoo mbv2-tiny", models.create("mbv2-tiny"))]:
        plan = odt.plan(model, "bias-only")
        stock = plan.apply_(copy.deepcopy(model)).eval()
        lean = odt.lean(model, plan).eval()
        x = models.example_input(model, batch_size=8)
        y = torch.arange(8) % 10
        stock_bytes, _ = run_step(stock, x, y)
        lean_bytes, _ = run_step(lean, x, y)
        for (pname, p), q in zip(stock.named_parameters(), lean.parameters(), strict=True):
            assert (p.grad is None) == (q.grad is None), pname
            if p.grad is not None:
                assert torch.allclose(p.grad, q.grad, **TOL), pname
        ratio = stock_bytes / lean_bytes
        with capsys.disabled():
            print(f"\n{name} bias-only eval batch 8: stock {stock_bytes:,} B, "
                  f"lean {lean_bytes:,} B, ratio {ratio:.1f}x")
        assert ratio >= 10


# ---------------------------------------------------------------- recompute


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["mobilenet-like", "functional-residual", "zoo:resnet8"])
def test_recompute_same_gradients_fewer_bytes(name: str, mode: str) -> None:
    model = build(name)
    recompute = "blocks"
    stock = odt.plan(model, "full").apply_(copy.deepcopy(model))
    plain = odt.lean(model, odt.plan(model, "full"))
    redo = odt.lean(model, odt.plan(model, "full", recompute=recompute))
    x = models.example_input(model, batch_size=4)
    y = torch.arange(4) % 3
    results = []
    for m in (stock, plain, redo):
        getattr(m, mode)()
        results.append(run_step(m, x, y))
    (_, l0), (b1, l1), (b2, l2) = results
    assert torch.allclose(l2, l0, **TOL) and b2 < b1
    for p0, p2 in zip(stock.parameters(), redo.parameters(), strict=True):
        assert torch.allclose(p2.grad, p0.grad, **TOL)
    # running statistics updated once, as without recompute
    for b0, b2_ in zip(stock.buffers(), redo.buffers(), strict=True):
        assert torch.allclose(b0.float(), b2_.float(), atol=1e-6, rtol=1e-5)


def test_recompute_keeps_only_block_inputs() -> None:
    block = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))
    model = nn.Sequential(block, nn.ReLU())
    lean = odt.lean(model, odt.plan(model, "full", recompute=["0"]))
    x = torch.randn(3, 10)
    # the block's input (3x10 fp32) plus the outer ReLU's mask (30 bits -> 4 bytes)
    assert layer_bytes(lean, x) == 3 * 10 * 4 + 4


# ---------------------------------------------------------------- single ops vs stock


CONVS = [
    lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1),
    lambda: nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=False),
    lambda: nn.Conv2d(4, 8, (3, 2), stride=(1, 2), padding=(1, 0)),
    lambda: nn.Conv2d(4, 4, 4, padding="same", dilation=1, groups=2),
    lambda: nn.Conv2d(4, 4, 3, padding="valid"),
    lambda: nn.Conv2d(4, 4, 3, padding=1, padding_mode="replicate"),
    lambda: nn.Conv1d(6, 6, 5, stride=3, padding=1, groups=3),
    lambda: nn.Conv3d(2, 3, 3, padding=1),
]


@pytest.mark.parametrize("weight_trains", [False, True])
@pytest.mark.parametrize("make", CONVS)
def test_conv_variants_match_stock(make, weight_trains: bool) -> None:
    torch.manual_seed(0)
    conv = make()
    conv.weight.requires_grad_(weight_trains)
    lean = odt.lean(conv, odt.plan(conv, lambda n, p: p.requires_grad))
    in_ch = conv.in_channels
    shape = {1: (2, in_ch, 11), 2: (2, in_ch, 7, 9), 3: (2, in_ch, 5, 4, 6)}
    for x in (torch.randn(shape[len(conv.kernel_size)]),
              torch.randn(shape[len(conv.kernel_size)][1:])):  # batched and unbatched
        xs, xl = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_s, out_l = conv(xs), lean(xl)
        assert torch.allclose(out_l, out_s, **TOL)
        g = torch.randn_like(out_s)
        out_s.backward(g)
        out_l.backward(g)
        assert torch.allclose(xl.grad, xs.grad, **TOL)
        for p, q in zip(conv.parameters(), lean.parameters(), strict=True):
            assert (p.grad is None) == (q.grad is None)
            if p.grad is not None:
                assert torch.allclose(q.grad, p.grad, **TOL)
                p.grad = q.grad = None


@pytest.mark.parametrize("lo, hi", [(0.0, None), (0.0, 6.0), (-1.0, 1.0), (-0.5, 0.25)])
def test_clamp_masks_match_stock_at_the_edges(lo: float, hi: float | None) -> None:
    edges = [lo, -0.0, 0.0, math.nextafter(lo, 1), math.nextafter(lo, -1), float("nan"),
             float("inf"), -float("inf"), 1e-45, -1e-45]
    if hi is not None:
        edges += [hi, math.nextafter(hi, -1), math.nextafter(hi, 2 * hi)]
    x = torch.cat([torch.tensor(edges), torch.randn(37) * 4])
    xs, xl = x.clone().requires_grad_(), x.clone().requires_grad_()
    if hi is None:
        ys = F.relu(xs)
        stock_mod = nn.ReLU()
    else:
        ys = F.hardtanh(xs, lo, hi)
        stock_mod = nn.Hardtanh(lo, hi)
    yl = odt.lean(stock_mod, "none")(xl)
    assert torch.equal(yl, ys) or torch.allclose(yl, ys, equal_nan=True)
    g = torch.randn_like(x)
    ys.backward(g)
    yl.backward(g)
    assert torch.equal(xl.grad, xs.grad)


def test_inplace_activation_and_leaf_errors() -> None:
    relu = odt.lean(nn.ReLU(inplace=True), "none")
    base = torch.randn(6, requires_grad=True)
    x = base * 1.0
    out = relu(x)
    assert out is x and torch.equal(out, (base * 1.0).relu())
    out.sum().backward()
    assert torch.equal(base.grad, (base > 0).float())
    with pytest.raises(RuntimeError, match="leaf Variable"):
        relu(torch.randn(3, requires_grad=True))


def test_lean_rejects_bad_input() -> None:
    model = build("mlp")
    with pytest.raises(ValueError, match="different model"):
        odt.lean(model, odt.plan(build("conv1d"), "full"))
    with pytest.raises(TypeError, match="TrainPlan"):
        odt.lean(model, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown scheme"):
        odt.lean(model, "bias-onyl")
    with pytest.raises(ValueError, match="no 'int8' arithmetic"):
        odt.lean(model, odt.plan(model, "full", precision="int8"))
    with pytest.raises(ValueError, match="cast the model"):
        odt.lean(model, odt.plan(model, "full", precision="bf16"))
    half = odt.lean(copy.deepcopy(model).to(torch.bfloat16),
                    odt.plan(model, "full", precision="bf16"))
    assert half(torch.randn(2, 12, dtype=torch.bfloat16)).dtype == torch.bfloat16


# ---------------------------------------------------------------- bit packing


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=200))
def test_pack_bits_roundtrip_and_numpy_layout(bits: list[bool]) -> None:
    mask = torch.tensor(bits, dtype=torch.bool)
    packed = engine.pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(len(bits) / 8)
    assert np.array_equal(packed.numpy(), np.packbits(np.array(bits, dtype=bool)))
    unpacked = engine.unpack_bits(packed, mask.shape)
    assert torch.equal(unpacked.bool(), mask)


def test_pack_bits_of_views_and_shapes() -> None:
    mask = torch.rand(3, 5, 7) > 0.5
    for m in (mask, mask.transpose(0, 2), mask[1:, :, 2:], mask.view(-1)[3:]):
        assert torch.equal(engine.unpack_bits(engine.pack_bits(m), m.shape).bool(), m)
    with pytest.raises(TypeError, match="bool"):
        engine.pack_bits(torch.zeros(3))
