"""Channel-sparse plans: the TrainPlan.channels field, odt.train keeping frozen entries
bit-identical, and the lean engine keeping only the selected input channels.

References: stock PyTorch autograd with the gradient masked (lean engine), and a stock
torch.nn.utils.parametrize model whose only trainable tensor is the selected slice
(training), which stock torch optimizers update.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from _saved import saved_bytes
from torch import nn
from torch.nn.utils import parametrize

import odtkit as odt


class Net(nn.Module):
    """conv (full) -> depthwise conv -> grouped conv -> linear, on (3, 8, 8) inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.group = nn.Conv2d(8, 8, 1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = torch.relu(self.group(self.dw(x)))
        return self.fc(x.flatten(1))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


# ---------------------------------------------------------------- the plan


def test_channels_are_canonical_hashable_and_counted(net: Net) -> None:
    base = odt.plan(net, "full")
    p = base.with_channels({"fc.weight": (1, [5, 1, 3]), "conv.weight": (0, range(4))})
    assert p.channels == (("conv.weight", 0, (0, 1, 2, 3)), ("fc.weight", 1, (1, 3, 5)))
    same = odt.plan(net, "full", channels={"conv.weight": (0, [3, 2, 1, 0]),
                                           "fc.weight": (1, torch.tensor([1, 3, 5]))})
    assert p == same and hash(p) == hash(same) and p != base
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.channels = ()  # type: ignore[misc]
    removed = 8 * 3 * 3 * 3 // 2 + 5 * (128 - 3)
    assert p.trainable_numel == base.trainable_numel - removed
    assert p.trainable_share == pytest.approx(p.trainable_numel / p.total_numel)
    masks = p.masks()
    assert set(masks) == {"conv.weight", "fc.weight"}
    assert int(masks["fc.weight"].sum()) == 5 * 3 and bool(masks["fc.weight"][:, 3].all())
    assert int(masks["conv.weight"].sum()) == 4 * 27 and not masks["conv.weight"][4:].any()
    # two dims of one parameter intersect; a later entry for the same dim replaces
    both = p.with_channels({"fc.weight": [(0, [0, 4]), (1, [7])]})
    assert both.channels[1:] == (("fc.weight", 0, (0, 4)), ("fc.weight", 1, (7,)))
    assert int(both.masks()["fc.weight"].sum()) == 2


@pytest.mark.parametrize(("selection", "error", "match"), [
    ({"fc.wieght": (1, [0])}, ValueError, r"unknown parameter .*'fc\.wieght'.*Did you mean "
                                          r"'fc\.weight'"),
    ({"fc.weight": (2, [0])}, ValueError, r"dim 2: fc\.weight has shape \(5, 128\), so dim "
                                          r"must be one of 0 \(out, size 5\), 1 \(in, size 128\)"),
    ({"fc.weight": (0, [5])}, ValueError, r"indices \[5\] out of range; valid indices are 0\.\.4"),
    ({"fc.weight": (0, [-1])}, ValueError, r"indices \[-1\] out of range"),
    ({"fc.weight": (0, [])}, ValueError, "no index selected"),
    ({"fc.weight": (0, [1, 2, 1])}, ValueError, r"indices \[1\] are selected more than once"),
    ({"fc.weight": (0, [1.0])}, TypeError, "an index must be an integer"),
    ({"fc.weight": (1.5, [1])}, TypeError, "dim .* must be an integer"),
    ({"fc.weight": [1, 2]}, TypeError, r"must be \(dim, indices\)"),
    ({"fc.weight": (0, "01")}, TypeError, "sequence of integers"),
])
def test_bad_selections_name_the_value_and_the_choices(net, selection, error, match) -> None:
    with pytest.raises(error, match=match):
        odt.plan(net, "full").with_channels(selection)


def test_a_frozen_parameter_cannot_select_channels(net: Net) -> None:
    with pytest.raises(ValueError, match=r"'conv\.weight', which the plan freezes"):
        odt.plan(net, "bias-only", channels={"conv.weight": (1, [0])})
    p = odt.plan(net, "full", channels={"conv.weight": (1, [0])})
    with pytest.raises(ValueError, match="which the plan freezes"):
        dataclasses.replace(p, trainable=p.trainable - {"conv.weight"})
    with pytest.raises(TypeError, match="channels must be a tuple"):
        dataclasses.replace(p, channels={"conv.weight": (1, [0])})


def test_describe_shows_the_selected_channels(net: Net) -> None:
    p = odt.plan(net, ["conv.weight", "conv.bias", "dw.weight", "fc.weight"], channels={
        "conv.weight": (1, [0, 2]), "dw.weight": (0, [1, 2, 3, 6]),
        "fc.weight": (1, list(range(0, 128, 3)))})
    text = p.describe()
    lines = text.splitlines()
    assert lines[0] == ("TrainPlan 'names': precision fp32, norm statistics frozen, "
                        "recompute none, 3 channel selections")
    assert lines[1].split() == ["parameter", "shape", "numel", "trains", "channels"]
    row = {line.split()[0]: line for line in lines[3:-1]}
    assert row["conv.weight"].endswith("part    in 2/3 (67%): 0, 2")
    assert row["conv.bias"].rstrip().endswith("yes") and row["group.bias"].endswith("no")
    assert row["dw.weight"].endswith("out 4/8 (50%): 1-3, 6")
    fc = row["fc.weight"]
    assert "in 43/128 (34%): 0, 3, 6," in fc and fc.endswith(", ...") and len(fc) < 120
    assert lines[-1].startswith(f"trainable {p.trainable_numel:,} of ")
    assert "<th>channels</th>" in p._repr_html_() and "1-3, 6" in p._repr_html_()
    assert "channels=3 selections" in repr(p)


# ---------------------------------------------------------------- training


class _Pick(nn.Module):
    """Parametrization: the weight is a frozen copy with slices ``idx`` along ``dim``
    replaced by the one trainable tensor (the selected slices)."""

    def __init__(self, weight: torch.Tensor, dim: int, idx: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("base", weight.detach().clone())
        self.register_buffer("idx", torch.tensor(idx))
        self.dim = dim

    def forward(self, part: torch.Tensor) -> torch.Tensor:
        return self.base.index_copy(self.dim, self.idx, part)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.index_select(self.dim, self.idx)


def stock_reference(model: nn.Module, plan: odt.TrainPlan) -> nn.Module:
    """A copy of ``model`` in which stock torch trains exactly the plan's entries: each
    channel-sparse weight is parametrized by its selected slices alone."""
    ref = copy.deepcopy(model)
    for name, dim, idx in plan.channels:
        module = ref.get_submodule(name.rsplit(".", 1)[0])
        parametrize.register_parametrization(module, "weight", _Pick(module.weight, dim, idx))
    sparse = {name for name, _, _ in plan.channels}
    for name, p in ref.named_parameters():
        p.requires_grad_(name in plan.trainable - sparse or "parametrizations" in name)
    return ref


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its plain name (a parametrized weight as computed)."""
    out = {}
    for key in model.state_dict():
        if "parametrizations" in key:
            continue
        module, attr = key.rsplit(".", 1) if "." in key else ("", key)
        out[key] = getattr(model.get_submodule(module), attr).detach().clone()
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            out[f"{name}.weight"] = module.weight.detach().clone()
    return out


@pytest.fixture(scope="module")
def digits() -> odt.datasets.Task:
    return odt.datasets.load("digits").subset(n_train=192, n_test=64)


MLP_CHANNELS = {"1.weight": (1, (0, 5, 9, 33, 63)), "3.weight": (0, tuple(range(0, 64, 3))),
                "5.weight": (1, tuple(range(32)))}
MBV2_CHANNELS = {"blocks.1.block.2.0.weight": (1, tuple(range(0, 48, 4))),  # 1x1, inputs
                 "blocks.2.block.1.0.weight": (0, (1, 5, 50)),  # depthwise, channels
                 "classifier.weight": (1, tuple(range(0, 128, 2)))}


@pytest.mark.parametrize(("zoo", "channels", "optimizer", "lr", "epochs", "n_train"), [
    ("mlp", MLP_CHANNELS, "sgd-m", 0.05, 3, 192),
    ("mlp", MLP_CHANNELS, "adam", 0.01, 3, 192),
    ("mbv2-tiny", MBV2_CHANNELS, "sgd-m", 0.05, 2, 64),
    ("mbv2-tiny", MBV2_CHANNELS, "adam", 0.01, 2, 64),
])
def test_train_keeps_frozen_entries_and_matches_stock(digits, zoo, channels, optimizer, lr,
                                                      epochs, n_train):
    """With weight decay: frozen entries bit-identical to the start, every other number
    bit-identical to stock torch training only the selected slices."""
    torch.manual_seed(0)
    model = odt.models.create(zoo, input_shape=digits.input_shape,
                              num_classes=digits.num_classes)
    plan = odt.plan(model, lambda n, p: n.endswith("bias") or n in channels,
                    channels=channels, norm_stats="batch")  # as the plan-less reference
    ref = stock_reference(model, plan)
    start = _weights(model)
    task = digits.subset(n_train=n_train, n_test=32)
    run = dict(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=0.01, batch_size=32,
               seed=0, progress=False)
    hist = odt.train(model, task, plan, **run)
    ref_hist = odt.train(ref, task, None, **run)
    assert hist.loss == ref_hist.loss
    got, want = _weights(model), _weights(ref)
    assert got.keys() == want.keys()
    for key, value in got.items():
        assert torch.equal(value, want[key]), key
    for name, keep in plan.masks().items():
        assert torch.equal(got[name][~keep], start[name][~keep]), name
        assert bool((got[name][keep] != start[name][keep]).all()), name  # they did train
    for name in plan.frozen:
        assert torch.equal(got[name], start[name]), name


def test_make_optimizer_masks_full_or_per_dim_agree_and_are_checked() -> None:
    torch.manual_seed(0)
    w0 = torch.randn(4, 6)
    rows, cols = torch.tensor([1, 0, 1, 1]).bool(), torch.tensor([0, 1, 1, 0, 0, 1]).bool()
    runs = []
    for masks in ((rows[:, None] & cols[None, :]), (rows.view(4, 1), cols.view(1, 6))):
        w = nn.Parameter(w0.clone())
        opt = odt.make_optimizer("adam", [w], 0.1, weight_decay=0.5, masks={w: masks})
        for step in range(3):
            w.grad = torch.full_like(w, float(step + 1))
            opt.step()
        runs.append(w.detach().clone())
    assert torch.equal(runs[0], runs[1])
    keep = rows[:, None] & cols[None, :]
    assert torch.equal(runs[0][~keep], w0[~keep]) and bool((runs[0][keep] != w0[keep]).all())
    w = nn.Parameter(w0.clone())
    with pytest.raises(ValueError, match=r"shape \(4,\) does not broadcast to .*\(4, 6\)"):
        odt.make_optimizer("sgd", [w], 0.1, masks={w: rows})  # rows needs .view(4, 1)
    with pytest.raises(TypeError, match="must be a bool tensor"):
        odt.make_optimizer("sgd", [w], 0.1, masks={w: torch.ones(4, 6)})


# ---------------------------------------------------------------- the lean engine

TOL = {"atol": 1e-5, "rtol": 1e-5}


def assert_masked_stock_gradients(stock: nn.Module, lean: nn.Module, plan) -> None:
    """Each lean gradient equals stock autograd's with the unselected entries zeroed (which
    the lean one holds exactly)."""
    masks, lean_params = plan.masks(), dict(lean.named_parameters())
    for name, p in stock.named_parameters():
        got = lean_params[name].grad
        if p.grad is None:
            assert got is None, name
            continue
        keep = masks.get(name, torch.ones_like(p, dtype=torch.bool))
        assert torch.allclose(got, p.grad.masked_fill(~keep, 0), **TOL), name
        assert not got[~keep].any(), name


# (layer, input shape, selection of weight/bias, input channels backward keeps)
LAYERS = {
    "conv2d inputs, stride, padding": (
        lambda: nn.Conv2d(6, 4, 3, stride=2, padding=1), (2, 6, 9, 9),
        {"weight": (1, [0, 3, 4])}, 3),
    "conv2d outputs (whole input)": (
        lambda: nn.Conv2d(6, 4, 3, padding=1), (2, 6, 9, 9), {"weight": (0, [1, 2])}, 6),
    "conv1d inputs, dilation": (
        lambda: nn.Conv1d(5, 4, 3, padding=2, dilation=2), (3, 5, 11),
        {"weight": (1, [1, 4])}, 2),
    "depthwise channels and bias": (
        lambda: nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6), (2, 6, 9, 9),
        {"weight": (0, [0, 2, 5]), "bias": (0, [2])}, 3),
    "depthwise x2 channels": (
        lambda: nn.Conv2d(3, 6, 3, groups=3), (2, 3, 7, 7), {"weight": (0, [1, 4])}, 2),
    "grouped inputs": (
        lambda: nn.Conv2d(6, 4, 3, groups=2), (2, 6, 7, 7), {"weight": (1, [1])}, 2),
    "grouped outputs": (
        lambda: nn.Conv2d(6, 4, 3, groups=2), (2, 6, 7, 7), {"weight": (0, [3])}, 3),
    "conv2d reflect padding": (
        lambda: nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect"), (2, 4, 5, 5),
        {"weight": (1, [2])}, 1),
    "conv2d kernel rows (whole input)": (
        lambda: nn.Conv2d(3, 2, 3), (2, 3, 6, 6), {"weight": (2, [0])}, 3),
    "linear inputs": (lambda: nn.Linear(10, 3), (4, 10), {"weight": (1, [0, 9])}, 2),
    "linear 3-d input, inputs and outputs": (
        lambda: nn.Linear(10, 3), (4, 2, 10), {"weight": [(1, [2, 3, 7]), (0, [1])]}, 3),
}


@pytest.mark.parametrize("case", list(LAYERS))
def test_lean_layer_keeps_selected_channels_with_stock_masked_gradients(case: str) -> None:
    make, shape, selection, kept = LAYERS[case]
    torch.manual_seed(0)
    stock = make()
    plan = odt.plan(stock, "full", channels=selection)
    lean = odt.lean(stock, plan)
    x = torch.randn(shape)
    xs, xl = x.clone().requires_grad_(), x.clone().requires_grad_()
    stock_bytes, ys = saved_bytes(stock, lambda: stock(xs))
    lean_bytes, yl = saved_bytes(lean, lambda: lean(xl))
    assert torch.equal(ys, yl)
    ys.square().sum().backward()
    yl.square().sum().backward()
    assert torch.allclose(xl.grad, xs.grad, **TOL)
    assert_masked_stock_gradients(stock, lean, plan)
    reflect = "reflect" in case  # the conv sees the padded input; F.pad keeps its input
    padded = [s + 2 * reflect for s in shape[2:]]
    spatial = 1 if stock.weight.dim() == 2 else math.prod(padded)
    rows = math.prod(shape[:-1]) if stock.weight.dim() == 2 else shape[0]
    pad_bytes = x.numel() * 4 if reflect else 0
    # selected channels x spatial x batch x 4 bytes
    assert lean_bytes == rows * kept * spatial * 4 + pad_bytes
    channels = shape[-1] if stock.weight.dim() == 2 else shape[1]
    assert stock_bytes == rows * channels * spatial * 4 + pad_bytes


def test_lean_zoo_model_keeps_the_hand_counted_bytes() -> None:
    """mbv2-tiny: channel-sparse 1x1 convs, a depthwise conv, an output-channel cut, a
    BatchNorm weight and the classifier; batch statistics (train mode)."""
    torch.manual_seed(0)
    model = odt.models.create("mbv2-tiny", input_shape=(1, 8, 8), num_classes=10)
    channels = {"blocks.1.block.2.0.weight": (1, tuple(range(0, 48, 4))),
                "blocks.2.block.0.0.weight": (0, tuple(range(24))),  # outputs: whole input
                "blocks.2.block.1.0.weight": (0, tuple(range(0, 96, 4))),
                "blocks.2.block.2.0.weight": (1, tuple(range(24))),
                "blocks.2.block.1.1.weight": (0, (3, 4)),  # a BatchNorm weight: hooked
                "classifier.weight": (1, tuple(range(0, 128, 4)))}
    dense = odt.plan(model, lambda n, p: n.endswith("bias") or n in channels,
                     norm_stats="batch")
    plan = dense.with_channels(channels)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    inputs: dict[str, tuple[int, ...]] = {}
    hooks = [model.get_submodule(n.rsplit(".", 1)[0]).register_forward_hook(
        lambda m, i, o, n=n: inputs.__setitem__(n, tuple(i[0].shape))) for n in channels]
    model(x)
    for h in hooks:
        h.remove()
    hand = 0  # what the selected weights add to a bias-only step: their kept inputs
    for name, (dim, idx) in channels.items():
        n, c, *spatial = inputs[name]
        kept = c if (dim == 0 and "block.0.0" in name) else len(idx)
        hand += 0 if "block.1.1" in name else n * kept * math.prod(spatial) * 4

    def step(m: nn.Module) -> int:
        m.train()
        nbytes, loss = saved_bytes(m, lambda: F.cross_entropy(m(x), y))
        loss.backward()
        return nbytes

    stock = dense.apply_(copy.deepcopy(model))
    stock_bytes = step(stock)
    lean = odt.lean(model, plan)
    sparse_bytes = step(lean)
    bias_bytes = step(odt.lean(model, odt.plan(model, "bias-only", norm_stats="batch")))
    dense_bytes = step(odt.lean(model, dense))
    assert sparse_bytes - bias_bytes == hand
    assert bias_bytes < sparse_bytes < dense_bytes < stock_bytes
    assert_masked_stock_gradients(stock, lean, plan)


def test_relean_and_copies_keep_the_right_selection(net: Net) -> None:
    plan = odt.plan(net, "full", channels={"conv.weight": (1, [1]), "fc.weight": (1, [0])})
    lean = odt.lean(net, plan)
    assert lean.conv.lean_channels.kept_channels == 1 and lean.dw.lean_channels is None
    twin = copy.deepcopy(lean)
    twin(torch.randn(2, 3, 8, 8)).sum().backward()
    assert not twin.conv.weight.grad[:, [0, 2]].any() and twin.conv.weight.grad[:, 1].any()
    dense = odt.lean(lean, odt.plan(net, "full"))
    assert dense.conv.lean_channels is None and dense.fc.lean_channels is None
