"""The memory estimate on the architectures researchers bring (tests/archs.py) and the zoo.

For every model and plan (full, bias-only, last:2) on the stock engine: the estimate
against ``odt.measure`` (categories and tensor peak within 2 %, allocator peak within
10 %), and both against references written here: autograd's saved-tensor hooks, the
parameters' ``.grad`` and the optimizer's state after a real step, the running total of
torch.profiler's allocator events, and PyTorch's MemTracker for full plans.
"""

from __future__ import annotations

import copy
import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from _saved import saved_bytes
from archs import ARCHS, build, example
from torch import nn
from torch.distributed._tools.mem_tracker import MemTracker
from torch.profiler import ProfilerActivity, profile

import odtkit as odt
from odtkit.memory import CATEGORIES, UnsupportedOperation, compare

ZOO = {"mcunet-tiny": (3, 16, 16), "mbv2-tiny": (3, 16, 16), "ds-cnn": (10, 25),
       "resnet8": (3, 16, 16), "mlp": (1, 8, 8)}
SCHEMES = ("full", "bias-only", "last:2")
BATCH = 4


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name in ARCHS:
        return build(name), example(name, BATCH)
    model = odt.models.create(name, input_shape=ZOO[name]).train()
    return model, odt.models.example_input(model, batch_size=BATCH)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def reference_step(model: nn.Module, x: torch.Tensor, plan) -> dict[str, int]:
    """One real SGD-momentum step of ``plan`` on a copy of ``model``, counted here:
    distinct storages autograd saves (hooks), .grad and optimizer state after the step,
    and the allocator's peak (profiler memory events, on top of weights and input)."""
    work = plan.apply_(copy.deepcopy(model))
    if work.training:
        plan.norm_mode_(work)
    params, buffers = list(work.parameters()), list(work.buffers())
    opt = torch.optim.SGD([p for p in params if p.requires_grad], lr=0.01, momentum=0.9)
    x = x.clone()
    labels = torch.arange(x.shape[0]) % 10
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        activations, logits = saved_bytes(work, lambda: work(x))
        loss = F.cross_entropy(logits, labels % logits.shape[1])
        del logits
        loss.backward()
        del loss
        opt.step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return {"weights": _nbytes(params + buffers),
            "gradients": _nbytes(p.grad for p in params if p.grad is not None),
            "optimizer": _nbytes(state), "activations": activations,
            "allocator_peak": _nbytes(params + buffers + [x]) + peak}


def _close(a: int, b: int, tol: float) -> bool:
    return abs(a - b) <= tol * max(b, 1)


@pytest.mark.parametrize(("name", "scheme"), list(itertools.product([*ARCHS, *ZOO], SCHEMES)))
def test_estimate_matches_measure_and_references(name, scheme):
    model, x = _model(name)
    plan = odt.plan(model, scheme)
    est = odt.estimate(model, x, plan, optimizer="sgd-m")
    meas = odt.measure(model, x, plan, optimizer="sgd-m", rss=False)
    ref = reference_step(model, x, plan)
    where = f"{name} {scheme}"
    errors = compare(est, meas)
    for cat in CATEGORIES:
        assert abs(errors[cat]) <= 0.02, (where, cat, est.by_category, meas.by_category)
        assert _close(est.by_category[cat], ref[cat], 0.02), (where, cat, ref)
        assert _close(meas.by_category[cat], ref[cat], 0.02), (where, cat, ref)
    assert abs(errors["peak"]) <= 0.02, (where, est.peak_bytes, meas.peak_bytes)
    assert _close(est.allocator_peak_bytes, meas.allocator_peak_bytes, 0.10), where
    assert _close(est.allocator_peak_bytes, ref["allocator_peak"], 0.10), (where, ref)
    assert est.allocator_peak_bytes >= est.peak_bytes


@pytest.mark.parametrize("name", [*ARCHS, *ZOO])
def test_full_plans_agree_with_memtracker(name):
    model, x = _model(name)
    est = odt.estimate(model, x, "full", optimizer="sgd-m")
    work = copy.deepcopy(model)
    opt = torch.optim.SGD(work.parameters(), lr=0.01, momentum=0.9)
    tracker = MemTracker()
    tracker.track_external(work, opt)
    with tracker:
        logits = work(x)
        F.cross_entropy(logits, torch.arange(x.shape[0]) % logits.shape[1]).backward()
        opt.step()
    snap = {k.name: v for k, v in tracker.get_tracker_snapshot()[torch.device("cpu")].items()
            if hasattr(k, "name")}
    assert est.by_category["weights"] == snap["PARAM"] + snap["BUFFER"]
    assert est.by_category["gradients"] == snap["GRAD"]
    assert est.by_category["optimizer"] == snap["OPT"]


# ---------------------------------------------------------------- by hand


class SelfAttention(nn.Module):
    """qkv projection, CPU flash attention, mean over tokens, a linear head."""

    def __init__(self, dim: int = 8, heads: int = 2, masked: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads, self.qkv, self.head = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, 3)
        self.masked = masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, D)
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        mask = torch.zeros(t, t) if self.masked else None  # an additive float mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, heads, T, D/heads)
        return self.head(out.transpose(1, 2).reshape(n, t, d).mean(1))


@pytest.mark.parametrize("masked", [False, True])
def test_flash_attention_keeps_what_the_cpu_kernel_keeps(masked):
    n, t, d, heads = 2, 5, 8, 2
    x = torch.randn(n, t, d)
    est = odt.estimate(SelfAttention(d, heads, masked), x, "full")
    # qkv's input; q, k, v (one storage, the projection's output); the attention output;
    # its logsumexp (N x heads x T); the head's input (N x D); the mask (T x T): float32
    by_hand = 4 * (n * t * d + 3 * n * t * d + n * t * d + n * heads * t + n * d
                   + masked * t * t)
    assert est.by_category["activations"] == by_hand
    model = SelfAttention(d, heads, masked)
    assert reference_step(model, x, odt.plan(model, "full"))["activations"] == by_hand


def test_lstm_bias_only_trains_the_recurrent_biases_and_counts_them():
    model, x = _model("lstm")
    plan = odt.plan(model, "bias-only")
    biases = {n for n in plan.trainable if n.startswith("rnn.")}
    assert biases == {f"rnn.bias_{g}_l{k}" for g in ("ih", "hh") for k in (0, 1)}
    params = dict(model.named_parameters())
    expected = 4 * sum(params[n].numel() for n in plan.trainable)
    est = odt.estimate(model, x, plan, optimizer="sgd")
    assert est.by_category["gradients"] == expected  # 4 x (96 x 4 + 10) bytes
    assert est.by_category["activations"] > 0  # the LSTM layers keep their inputs
    work = plan.apply_(copy.deepcopy(model))
    before = {n: p.detach().clone() for n, p in work.named_parameters()}
    opt = torch.optim.SGD([p for p in work.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(work(x), torch.arange(BATCH) % 10).backward()
    opt.step()
    changed = {n for n, p in work.named_parameters() if not torch.equal(p, before[n])}
    assert changed == plan.trainable


def test_frozen_transformer_runs_pytorchs_fused_path():
    model, x = _model("transformer")
    model.eval()  # frozen encoder layers in eval mode: one fused op each
    est = odt.estimate(model, x, "last:1")
    meas = odt.measure(model, x, "last:1", rss=False)
    assert est.peak_bytes == meas.peak_bytes
    assert _close(est.allocator_peak_bytes, meas.allocator_peak_bytes, 0.10)
    unfused = odt.estimate(model, x, "full")  # something trains: the layers run unfused
    assert unfused.peak_bytes == odt.measure(model, x, "full", rss=False).peak_bytes


def test_device_fit_says_which_peak_it_checks():
    model, x = _model("resnet18")
    est = odt.estimate(model, x, "bias-only")
    pi = odt.device("raspberry-pi-4").fit(est)
    assert pi.peak == "allocator" and pi.needed_bytes == est.allocator_peak_bytes
    assert "allocator peak" in pi.verdict
    mcu = odt.device("stm32f746").fit(est)  # its kernels are not PyTorch's
    assert mcu.peak == "tensor" and "allocator peak" not in mcu.verdict
    assert sum(c.needed_bytes for c in mcu.checks) == est.peak_bytes
    assert odt.device("raspberry-pi-4").fit(1000).peak is None


def test_an_architecture_with_several_unsupported_ops_names_them_all():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x).cumsum(1)
            return torch.fft.fft(y).real + y.flip(1)

    with pytest.raises(UnsupportedOperation) as err:
        odt.estimate(Odd(), torch.randn(2, 6), "full")
    names = re.findall(r"aten\.(\w+) in", str(err.value))
    assert {"cumsum", "flip"} <= set(names) and len(names) == len(set(names)) >= 3


@pytest.mark.parametrize("name", list(ARCHS))
def test_archs_are_deterministic_classifiers(name):
    a, b = build(name), build(name)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    assert torch.equal(example(name), example(name))
    logits = a.eval()(example(name, batch_size=3))
    assert logits.shape == (3, ARCHS[name][2])


# ---------------------------------------------------------------- more layer kinds


class EveryActivation(nn.Module):
    """Every listed activation, in place where PyTorch has the form, with GroupNorm,
    LayerNorm over channels, max pooling and a softmax gate."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.gn = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.conv2, self.conv3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.acts = nn.ModuleList([
            nn.ReLU(inplace=True), nn.ReLU6(inplace=True), nn.Hardtanh(-1.0, 1.0, inplace=True),
            nn.Hardswish(inplace=True), nn.Hardsigmoid(inplace=True), nn.SiLU(inplace=True),
            nn.LeakyReLU(inplace=True), nn.ELU(inplace=True), nn.GELU(), nn.Mish(),
            nn.Softplus(), nn.Sigmoid(), nn.Tanh(), nn.Hardswish(), nn.SiLU()])
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, 8, 8)
        x = self.gn(self.conv1(x))
        for k, act in enumerate(self.acts):
            x = act(self.conv2(x) if k % 3 == 0 else x * 1.5) if k % 2 else act(x + 0.1)
        x = F.max_pool2d(self.conv3(x), 2)  # (N, 8, 4, 4)
        x = x * torch.softmax(x.mean((2, 3), keepdim=True), dim=1)  # a broadcast gate
        x = torch.sigmoid_(x.clone()) * torch.tanh_(x.clone())
        x = self.norm(x.permute(0, 2, 3, 1)).flatten(1, 2)  # (N, 16, 8)
        return F.log_softmax(self.head(x.mean(1)), dim=1)


class Recurrent(nn.Module):
    """nn.RNN (2 layers) into a bidirectional GRU into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.RNN(6, 8, num_layers=2, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 6)
        return self.head(self.gru(self.rnn(x)[0])[0][:, -1])


@pytest.mark.parametrize(("make", "shape"), [(EveryActivation, (3, 8, 8)), (Recurrent, (7, 6))])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_more_layer_kinds_match_measure_and_references(make, shape, scheme):
    model, x = make().train(), torch.randn(BATCH, *shape)
    plan = odt.plan(model, scheme)
    est = odt.estimate(model, x, plan, optimizer="sgd-m")
    meas = odt.measure(model, x, plan, optimizer="sgd-m", rss=False)
    ref = reference_step(model, x, plan)
    for cat in CATEGORIES:
        assert _close(est.by_category[cat], meas.by_category[cat], 0.02), (cat, scheme)
        assert _close(est.by_category[cat], ref[cat], 0.02), (cat, scheme, ref)
    assert _close(est.peak_bytes, meas.peak_bytes, 0.02)
    assert _close(est.allocator_peak_bytes, ref["allocator_peak"], 0.10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "resnet18",
                                  "vit_b_16"])
def test_torchvision_models_where_installed(name):
    models = pytest.importorskip("torchvision.models")
    model = getattr(models, name)(num_classes=10).train()
    x = torch.randn(2, 3, 224 if name.startswith("vit") else 96,
                    224 if name.startswith("vit") else 96)
    est = odt.estimate(model, x, "bias-only", optimizer="sgd-m")
    meas = odt.measure(model, x, "bias-only", optimizer="sgd-m", rss=False)
    errors = compare(est, meas)
    assert all(abs(errors[c]) <= 0.02 for c in CATEGORIES) and abs(errors["peak"]) <= 0.02
    assert _close(est.allocator_peak_bytes, meas.allocator_peak_bytes, 0.10)


# ---------------------------------------------------------------- one op at a time

OPS = {  # name -> f(h, g): h (N, 4, 6) and g (N, 4, 1) need gradients, their result feeds a head
    "prelu": lambda h, g: F.prelu(h, g.new_ones(4) * 0.2),
    "adaptive_max_pool": lambda h, g: F.adaptive_max_pool2d(h.unsqueeze(1), (2, 3)).flatten(1),
    "baddbmm": lambda h, g: torch.baddbmm(h[:, :, :4], h, h.transpose(1, 2)),
    "div_by_tensor": lambda h, g: h / (g * g + 1.0),
    "div_in_place": lambda h, g: (h * 1.0).div_(g * g + 1.0),
    "exp_neg": lambda h, g: torch.exp(-h),
    "native_dropout": lambda h, g: torch.native_dropout(h, 0.25, True)[0],
    "gelu_in_place": lambda h, g: torch.ops.aten.gelu_(h * 1.0),
    "sub_in_place": lambda h, g: (h * 1.0).sub_(g),
    "stack_split": lambda h, g: torch.stack(h.split(2, dim=1), 0).sum(0),
    "bmm": lambda h, g: torch.bmm(h.transpose(1, 2), h),
    "sigmoid_tanh_in_place": lambda h, g: torch.sigmoid_(h * 1.0) + torch.tanh_(g * 1.0),
    "where_masked_fill": lambda h, g: torch.where(h > 0, h, g).masked_fill(h.tril() > 1, 0.0),
    "elementwise_math": lambda h, g: (h.abs() + 1).log() + (g * g + 1).rsqrt() + h.clamp(-1, 1)
    + (h * h + 1).sqrt() + h.pow(2),
}


class OneOp(nn.Module):
    def __init__(self, op) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.op, self.fc, self.gate = op, nn.Linear(3, 6), nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 4, 3)
        y = self.op(self.fc(x), self.gate(x))
        return y.flatten(1)[:, :5]


@pytest.mark.parametrize("op", list(OPS))
def test_each_rule_matches_autograds_saved_tensors(op):
    model, x = OneOp(OPS[op]).train(), torch.randn(3, 4, 3)
    plan = odt.plan(model, "full")
    est = odt.estimate(model, x, plan, optimizer="sgd")
    ref = reference_step(model, x, plan)
    assert est.by_category["activations"] == ref["activations"], op
    meas = odt.measure(model, x, plan, optimizer="sgd", rss=False)
    assert _close(est.peak_bytes, meas.peak_bytes, 0.02), op
