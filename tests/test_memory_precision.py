"""Memory reports per precision: the int8 graph counted as a device keeps it, the autocast
and fp8 steps estimated to the byte of their measurement, device fit per precision. References: a real step of each (measure), hand
counts from parameter and activation sizes, the device profile's own numbers."""

from __future__ import annotations

import copy

import pytest
import torch

import odtkit as odt
from odtkit.quant import to_int8


def _int8(name: str, batch: int = 2):
    torch.manual_seed(0)
    model = odt.models.create(name, num_classes=10)
    x = odt.models.example_input(model, batch_size=batch)
    return model, to_int8(model, torch.randn(16, *x.shape[1:])), x


@pytest.mark.parametrize(("name", "scheme", "optimizers"), [
    ("mcunet-tiny", "full", ("sgd", "adam")), ("mcunet-tiny", "bias-only", ("sgd-m",)),
    ("mcunet-tiny", "last:2", ("sgd", "sgd-m", "adam")), ("ds-cnn", "full", ("sgd-m",)),
    ("ds-cnn", "bias-only", ("adam",)), ("resnet8", "last:2", ("sgd-m",))])
def test_int8_estimate_matches_the_real_int8_step(name, scheme, optimizers):
    _, q, x = _int8(name)
    plan = odt.plan(q, scheme, precision="int8")
    for optimizer in optimizers:
        est = odt.estimate(q, x, plan, optimizer=optimizer)
        meas = odt.measure(q, x, plan, optimizer=optimizer, rss=False)
        assert est.by_category == meas.by_category, (optimizer, est.by_category)
        assert est.frozen_weight_bytes == meas.frozen_weight_bytes
        assert est.peak_bytes == meas.peak_bytes == est.total_bytes
        assert {r.name: r.saved_bytes for r in est.rows} == {
            r.name: r.saved_bytes for r in meas.rows}
        assert est.precision == meas.precision == "int8"


def test_int8_bytes_by_hand():
    _, q, x = _int8("mlp")
    layers = q.layers()
    weights = sum(layer.weight.numel() for layer in layers.values())
    biases = sum(layer.bias.numel() for layer in layers.values())
    buffers = sum(b.numel() for b in q.buffers())
    last = list(layers)[-1]
    plan = odt.plan(q, [f"{last}.weight", f"{last}.bias"], precision="int8")
    rep = odt.measure(q, x, plan, optimizer="sgd-m", rss=False)
    head = layers[last]
    trained = head.weight.numel() + head.bias.numel()
    assert rep.by_category["weights"] == 1 * weights + 4 * biases + 4 * buffers
    assert rep.by_category["gradients"] == 4 * trained
    assert rep.by_category["optimizer"] == 4 * trained
    # the last linear keeps its int8 input (batch x in) and its clamp mask (batch x out)
    batch = x.shape[0]
    assert rep.by_category["activations"] == batch * head.weight.shape[1] + batch * 10
    frozen = sum(layer.weight.numel() + 4 * layer.bias.numel()
                 for p, layer in layers.items() if p != last)
    assert rep.frozen_weight_bytes == frozen + 4 * buffers
    assert "int8" in rep.table() and "weights 1 (int8)" in rep.table()


def test_int8_measure_leaves_the_model_untouched_and_refuses_mismatches():
    model, q, x = _int8("mlp")
    before = {n: p.clone() for n, p in q.named_parameters()}
    odt.measure(q, x, "full", optimizer="sgd", rss=False)
    assert all(torch.equal(before[n], p) for n, p in q.named_parameters())
    with pytest.raises(ValueError, match="'int8' needs the int8 graph.*to_int8"):
        odt.estimate(model, x, odt.plan(model, "full", precision="int8"))
    with pytest.raises(ValueError, match="Int8Model.*'fp32'.*precision='int8'"):
        odt.measure(q, x, odt.plan(q, "full"), rss=False)
    with pytest.raises(ValueError, match="engine='pytorch'"):
        odt.estimate(q, x, "full", engine="lean")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_step_keeps_fp32_weights_and_two_byte_activations(precision):
    torch.manual_seed(0)
    model = odt.models.create("mlp", num_classes=10)
    x = odt.models.example_input(model, batch_size=4)
    plan = odt.plan(model, "full", precision=precision)
    rep = odt.measure(model, x, plan, optimizer="sgd-m", rss=False)
    fp32 = odt.measure(model, x, odt.plan(model, "full"), optimizer="sgd-m", rss=False)
    n_params = sum(p.numel() for p in model.parameters())
    assert rep.by_category["weights"] == 4 * n_params == fp32.by_category["weights"]
    assert rep.by_category["gradients"] == 4 * n_params
    scaler = 8 if precision == "fp16" else 0  # scale (fp32) and growth tracker (int32)
    assert rep.by_category["optimizer"] == 4 * n_params + scaler
    # autograd's own view: every tensor kept for backward under autocast
    kept: dict[int, int] = {}
    sizes = set()

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            kept[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
            sizes.add(t.element_size())
        return t

    work = plan.apply_(__import__("copy").deepcopy(model))
    params = {p.untyped_storage()._cdata for p in work.parameters()}
    with torch.autocast("cpu", dtype=getattr(torch, {"bf16": "bfloat16",
                                                     "fp16": "float16"}[precision])):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            work(x)
    assert rep.by_category["activations"] == sum(v for k, v in kept.items() if k not in params)
    assert 2 in sizes  # the cast inputs and weight copies of the linears
    est = odt.estimate(model, x, plan, optimizer="sgd-m")
    assert (est.by_category, est.peak_bytes) == (rep.by_category, rep.peak_bytes)


# a small input keeps the real autocast steps fast; every model accepts it
SMALL = {"mcunet-tiny": (3, 16, 16), "mbv2-tiny": (3, 16, 16), "ds-cnn": (10, 25),
         "resnet8": (3, 16, 16), "mlp": (1, 8, 8)}


@pytest.mark.parametrize(("name", "scheme", "optimizer", "precision"), [
    ("mcunet-tiny", "full", "sgd-m", "bf16"), ("mcunet-tiny", "last:2", "adam", "fp16"),
    ("mbv2-tiny", "bias-only", "sgd", "fp16"), ("mbv2-tiny", "full", "adam", "bf16"),
    ("ds-cnn", "full", "adam", "fp16"), ("ds-cnn", "bias-only", "sgd-m", "bf16"),
    ("mlp", "full", "adam", "bf16"), ("mlp", "last:2", "sgd", "fp16"),
    ("resnet8", "last:2", "sgd-m", "fp16"), ("resnet8", "full", "sgd", "bf16")])
def test_autocast_estimate_matches_the_real_step(name, scheme, optimizer, precision):
    model = odt.models.create(name, num_classes=10, input_shape=SMALL[name])
    x = odt.models.example_input(model, batch_size=2)
    plan = odt.plan(model, scheme, precision=precision)
    est = odt.estimate(model, x, plan, optimizer=optimizer)
    meas = odt.measure(model, x, plan, optimizer=optimizer, rss=False)
    assert est.by_category == meas.by_category
    assert est.peak_bytes == meas.peak_bytes  # to the byte, transients included
    assert est.frozen_weight_bytes == meas.frozen_weight_bytes
    assert {r.name: r.saved_bytes for r in est.rows} == {r.name: r.saved_bytes for r in meas.rows}
    assert est.precision == meas.precision == precision
    assert (est.forward_macs, est.backward_macs) == (meas.forward_macs, meas.backward_macs)


def test_autocast_bytes_by_hand():
    """mlp (Flatten, Linear 64-128, ReLU, Linear 128-64, ReLU, Linear 64-10), last two
    linears trained, batch 3: every kept tensor is 2 bytes per element."""
    torch.manual_seed(0)
    model = odt.models.create("mlp", num_classes=10)
    batch = 3
    x = odt.models.example_input(model, batch_size=batch)
    n_params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for n, p in model.named_parameters() if n[0] in "35")
    reports = {p: odt.estimate(model, x, odt.plan(model, "last:2", precision=p),
                               optimizer="adam") for p in ("fp32", "bf16", "fp16")}
    for precision, rep in reports.items():
        assert rep.by_category["weights"] == 4 * n_params  # fp32 master weights
        assert rep.by_category["gradients"] == 4 * trained
        scaler = 8 if precision == "fp16" else 0  # scale (fp32), growth tracker (int32)
        assert rep.by_category["optimizer"] == 2 * 4 * trained + 4 * 4 + scaler
    # linear 3 keeps its input (the first ReLU's output), ReLU 4 its output, which linear 5
    # keeps too, with its weight (the cast copy at 2 bytes; fp32 keeps the parameter itself)
    kept = batch * 128 + batch * 64
    assert reports["fp32"].by_category["activations"] == 4 * kept
    for precision in ("bf16", "fp16"):
        assert reports[precision].by_category["activations"] == 2 * (kept + 10 * 64)
        assert "2 in " + precision in reports[precision].table()
    # Adam's peak is in its step (the denominator of the largest weight); at fp16 the
    # scaler's scale and growth tracker and the found-inf flag unscale_ keeps are alive too
    peaks = {p: max(rep.timeline, key=lambda point: point[1]) for p, rep in reports.items()}
    assert all(label == "step: div" for label, _ in peaks.values())
    assert reports["fp16"].peak_bytes == reports["bf16"].peak_bytes + 8 + 4


def test_an_input_sliced_from_a_dataset_counts_its_own_bytes():
    torch.manual_seed(0)
    model = odt.models.create("mlp", num_classes=10)
    dataset = torch.randn(50, *odt.models.example_input(model).shape[1:])
    plan = odt.plan(model, "full", precision="bf16")
    est = odt.estimate(model, dataset[:2], plan)
    for x in (dataset[:2], dataset[:2].clone()):  # a view keeps all 50 alive, not the step
        meas = odt.measure(model, x, plan, rss=False)
        assert (meas.by_category, meas.peak_bytes) == (est.by_category, est.peak_bytes)


class _Twice(torch.nn.Module):
    """One linear called twice: autocast's cache serves its second call the first copy."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(torch.relu(self.fc(x)))))


def test_autocast_estimate_refuses_a_trained_weight_cast_twice_and_lean():
    model, x = _Twice(), torch.randn(3, 8)
    frozen_fc = odt.plan(model, ["head.weight", "head.bias"], precision="bf16")
    est = odt.estimate(model, x, frozen_fc, optimizer="sgd-m")  # no cache: each call casts
    meas = odt.measure(model, x, frozen_fc, optimizer="sgd-m", rss=False)
    assert (est.by_category, est.peak_bytes) == (meas.by_category, meas.peak_bytes)
    plan = odt.plan(model, "full", precision="fp16")
    with pytest.raises(ValueError, match=r"'fc\.\w+' cast twice under autocast.*odt\.measure"):
        odt.estimate(model, x, plan)
    assert odt.measure(model, x, plan, rss=False).peak_bytes > 0
    for method in (odt.estimate, odt.measure):
        with pytest.raises(ValueError, match="engine='lean' runs fp32.*engine='pytorch'"):
            method(model, x, odt.plan(model, "full", precision="bf16"), engine="lean")


def test_stm32f746_fit_of_int8_and_fp32_plans():
    model, q, x = _int8("mcunet-tiny", batch=1)
    dev = odt.device("stm32f746")
    reports = {"fp32": odt.estimate(model, x, odt.plan(model, "last:2"), optimizer="sgd-m"),
               "int8": odt.estimate(q, x, odt.plan(q, "last:2", precision="int8"),
                                    optimizer="sgd-m")}
    for precision, rep in reports.items():
        fit = dev.fit(rep)
        checks = {c.memory: c.needed_bytes for c in fit.checks}
        assert checks == {"sram": rep.peak_bytes - rep.frozen_weight_bytes,
                          "flash": rep.frozen_weight_bytes}
        macs = rep.forward_macs + rep.backward_macs
        peak = {"fp32": 216e6, "int8": 432e6}[precision]  # the profile's derived peaks
        moved = 2 * rep.total_bytes
        assert fit.dtype == precision
        assert fit.step_time_s == pytest.approx(max(macs / peak, moved / 1.728e9))
    # flash: the frozen int8 conv weights take a quarter of their fp32 bytes
    trains = reports["int8"].rows
    trained = {r.name for r in trains if r.trainable}
    frozen = [layer for p, layer in q.layers().items() if p not in trained]
    w = sum(layer.weight.numel() for layer in frozen)
    b = sum(layer.bias.numel() for layer in frozen)
    buffers = 4 * sum(t.numel() for t in q.buffers())
    assert reports["int8"].frozen_weight_bytes == w + 4 * b + buffers
    flash = {p: {c.memory: c.needed_bytes for c in dev.fit(r).checks}["flash"]
             for p, r in reports.items()}
    assert flash["int8"] < flash["fp32"] / 2


def test_fp16_fit_on_a_chip_without_fp16_units_says_so():
    torch.manual_seed(0)
    model = odt.models.create("mlp", num_classes=10)
    x = odt.models.example_input(model, batch_size=1)
    rep = odt.estimate(model, x, odt.plan(model, "full", precision="fp16"))
    fit = odt.device("stm32f746").fit(rep)
    assert fit.step_time_s is None
    assert any("no fp16 peak" in n and "single precision" in n for n in fit.notes)
    bf = odt.estimate(model, x, odt.plan(model, "full", precision="bf16"))
    notes = odt.device("stm32f746").fit(bf).notes
    assert any("bf16 step time at the fp16 peak" in n for n in notes)


# ---------------------------------------------------------------- fp8


@pytest.mark.parametrize(("name", "scheme", "optimizer", "precision"), [
    ("mcunet-tiny", "full", "adam", "fp8-e4m3"), ("mcunet-tiny", "last:2", "sgd-m", "fp8-e5m2"),
    ("mbv2-tiny", "bias-only", "sgd", "fp8-e4m3"), ("resnet8", "last:2", "sgd-m", "fp8-e4m3"),
    ("ds-cnn", "full", "sgd-m", "fp8-e4m3"), ("mlp", "full", "adam", "fp8-e5m2")])
def test_fp8_estimate_matches_the_real_fp8_step(name, scheme, optimizer, precision):
    torch.manual_seed(0)
    model = odt.models.create(name, num_classes=10)
    x = odt.models.example_input(model, batch_size=2)
    plan = odt.plan(model, scheme, precision=precision)
    est = odt.estimate(model, x, plan, optimizer=optimizer)
    meas = odt.measure(model, x, plan, optimizer=optimizer, rss=False)
    assert est.by_category == meas.by_category
    assert est.frozen_weight_bytes == meas.frozen_weight_bytes
    assert est.peak_bytes == meas.peak_bytes == est.total_bytes
    assert {r.name: r.saved_bytes for r in est.rows} == {r.name: r.saved_bytes for r in meas.rows}
    assert est.precision == meas.precision == precision
    fp32 = odt.measure(model, x, odt.plan(model, scheme), optimizer=optimizer, rss=False)
    assert meas.by_category["weights"] == fp32.by_category["weights"]  # fp32 master weights
    assert meas.by_category["optimizer"] == fp32.by_category["optimizer"]
    assert meas.by_category["gradients"] <= fp32.by_category["gradients"]


def test_fp8_bytes_by_hand():
    torch.manual_seed(0)
    model = odt.models.create("mlp", num_classes=10)
    batch = 3
    x = odt.models.example_input(model, batch_size=batch)
    lin = [m for m in model if isinstance(m, torch.nn.Linear)]
    hidden, head = lin[-2], lin[-1]
    plan = odt.plan(model, "last:2", precision="fp8-e4m3")
    assert plan.trainable == {f"{i}.{p}" for i in ("3", "5") for p in ("weight", "bias")}
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    for method in (odt.estimate, odt.measure):
        kw = {"rss": False} if method is odt.measure else {}
        rep = method(model, x, plan, optimizer="sgd-m", **kw)
        trained = [hidden.weight, hidden.bias, head.weight, head.bias]
        assert rep.by_category["weights"] == 4 * (n_params + n_buffers)
        # weight gradients arrive through the fp8 casts (1 B), bias gradients fp32 (4 B)
        assert rep.by_category["gradients"] == (hidden.weight.numel() + head.weight.numel()
                                                + 4 * (hidden.bias.numel() + 10))
        assert rep.by_category["optimizer"] == 4 * sum(p.numel() for p in trained)
        # hidden linear: its fp8 input copy (its weight trains, its input needs no gradient);
        # ReLU: its fp32 output; head: fp8 copies of its input and of its weight
        assert rep.by_category["activations"] == (
            batch * hidden.in_features + 4 * batch * hidden.out_features
            + batch * head.in_features + head.weight.numel())
        assert rep.peak_bytes == rep.total_bytes
        assert "fp8" in rep.table() and any("1 B per element" in n for n in rep.notes)


def test_fp8_casts_are_marked_for_the_memory_model():
    from odtkit.quant.precision import fp8_autocast, is_fp8_cast

    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(2, 3)
    arrived = []
    w.register_hook(lambda g: arrived.append(is_fp8_cast(g)))
    saved = []
    with fp8_autocast("fp8-e4m3"), torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(is_fp8_cast(t)) or t, lambda t: t):
        y = torch.nn.functional.linear(x, w)
    y.sum().backward()
    assert saved == [True] and arrived == [True]  # addmm keeps the input copy only
    assert not is_fp8_cast(x) and not is_fp8_cast(w) and not is_fp8_cast(w.grad * 1)


def test_fp8_estimate_refuses_a_matmul_outside_linear():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(8, 10))

        def forward(self, x):
            return x @ self.w

    model = Net()
    x = torch.randn(2, 8)
    plan = odt.plan(model, "full", precision="fp8-e4m3")
    with pytest.raises(ValueError, match=r"aten\.mm in .*Net \(module .*fp8.*odt\.measure"):
        odt.estimate(model, x, plan)


def test_fp16_measure_counts_the_state_of_a_step_that_really_updates():
    """At GradScaler's default scale (65536) this step's fp16 gradients overflow, so a plain
    first step is skipped and keeps no momentum; measure finds a scale that steps, so the
    optimizer state is the momentum of every trained value (4 bytes each) plus the scaler's
    scale and growth tracker (4 + 4 bytes)."""
    from odtkit.quant import fold_bn_

    model = fold_bn_(odt.models.create("mcunet-tiny", pretrained=True).eval())
    names = [n for n, _ in model.named_parameters() if n.startswith(("blocks.7.", "classifier."))]
    x = odt.models.example_input(model, batch_size=1)
    # the premise, by hand: PyTorch's GradScaler at its default scale skips this step
    probe = copy.deepcopy(model)
    for n, p in probe.named_parameters():
        p.requires_grad_(n in names)
    opt = torch.optim.SGD([p for p in probe.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        logits = probe(x)
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(1) % logits.shape[1])
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 65536.0 and not opt.state  # skipped: no momentum
    report = odt.measure(model, x, odt.plan(model, names, precision="fp16"), optimizer="sgd-m",
                         rss=False)
    trained = sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert report.by_category["optimizer"] == 4 * trained + 8
    assert report.by_category["gradients"] == 4 * trained
