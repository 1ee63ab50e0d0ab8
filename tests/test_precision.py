"""Training precisions: odt.train against PyTorch's autocast and GradScaler run by hand,
float8 casts against hand-scaled ``.to(float8)``, int8 + QAS against torch optimizers on
hand-scaled gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from _train_worker import make_task
from torch import nn
from torch.nn import functional as F

import odtkit as odt
from odtkit.quant import fp8_autocast, fp8_cast, precision_info, to_int8
from odtkit.quant.qas import qas_scales

SEED, BATCH = 4, 8


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def first_batches(task, steps: int, batch: int = BATCH):
    """The batches odt.train's loop draws: one permutation from a Generator seeded by seed."""
    perm = torch.randperm(len(task.y_train), generator=torch.Generator().manual_seed(SEED))
    return [(task.x_train[perm[i * batch:(i + 1) * batch]],
             task.y_train[perm[i * batch:(i + 1) * batch]]) for i in range(steps)]


def q_ref(x: torch.Tensor, f8: torch.dtype) -> torch.Tensor:
    """The per-tensor scaled float8 round trip, written out."""
    fmax = torch.finfo(f8).max
    s = x.abs().max() / fmax
    return (x / s).clamp(-fmax, fmax).to(f8).to(torch.float32) * s


# ------------------------------------------------------------------ fp16
class Blowup:
    """Cross entropy, multiplied by 1e30 at the calls listed (fp16 gradients overflow)."""

    def __init__(self, at: set[int]) -> None:
        self.at, self.calls, self.__name__ = at, 0, "blowup"

    def __call__(self, logits, y):
        self.calls += len(y) == BATCH  # training batches only
        loss = F.cross_entropy(logits, y)
        return loss * 1e30 if self.calls in self.at else loss


def test_fp16_overflow_is_skipped_as_a_hand_run_gradscaler_skips_it():
    task, steps, bad = make_task(), 5, 3
    model = mlp()
    ref, before_bad, skipped = (copy.deepcopy(model) for _ in range(3))
    hist = odt.train(model, task, odt.plan(model, "full", precision="fp16"), lr=0.05,
                     batch_size=BATCH, seed=SEED, max_steps=steps, loss_fn=Blowup({bad}),
                     progress=False)
    # the reference: autocast fp16 + torch.amp.GradScaler("cpu") by hand
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    scaler, scales = torch.amp.GradScaler("cpu"), []
    loss_fn = Blowup({bad})
    for x, y in first_batches(task, steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = loss_fn(ref(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert a.dtype == torch.float32
        assert torch.equal(a, b), float((a - b).abs().max())
    assert scales[bad - 2] == 65536.0 and scales[bad - 1] == 32768.0  # halved at the overflow
    assert hist.loss_scale == [32768.0] and hist.skipped_steps == [1]
    assert hist.precision == "fp16" and "fp16, loss scale 32768, 1 skipped" in repr(hist)
    # the skipped step left the weights as they were before it
    odt.train(before_bad, task, odt.plan(before_bad, "full", precision="fp16"), lr=0.05,
              batch_size=BATCH, seed=SEED, max_steps=bad - 1, progress=False)
    odt.train(skipped, task, odt.plan(skipped, "full", precision="fp16"), lr=0.05,
              batch_size=BATCH, seed=SEED, max_steps=bad, loss_fn=Blowup({bad}), progress=False)
    for a, b in zip(before_bad.parameters(), skipped.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_resumed_fp16_run_equals_an_uninterrupted_one(tmp_path):
    task = make_task()

    class Stop(Exception):
        pass

    def stop_after_first(history, model):
        raise Stop

    def run(path, callbacks=()):
        model = mlp()
        torch.manual_seed(11)  # draws below come from the loop's global RNG (checkpointed)

        def sometimes(logits, y):  # overflows at random steps: the RNG a resume restores
            loss = F.cross_entropy(logits, y)
            return loss * 1e30 if float(torch.rand(())) < 0.2 else loss

        hist = odt.train(model, task, odt.plan(model, "full", precision="fp16"), epochs=3,
                         batch_size=BATCH, seed=SEED, loss_fn=sometimes, checkpoint=path,
                         callbacks=callbacks, progress=False)
        return model, hist

    whole, h_whole = run(tmp_path / "a.pt")
    with pytest.raises(Stop):
        run(tmp_path / "b.pt", callbacks=(stop_after_first,))
    resumed, h_resumed = run(tmp_path / "b.pt")
    assert h_whole.skipped_steps[0] >= 1 and h_whole.loss_scale[0] < 65536  # state to keep
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    untimed = [{k: v for k, v in h.as_dict().items() if k != "time_s"}
               for h in (h_whole, h_resumed)]
    assert untimed[0] == untimed[1]


def logits_seen():
    """(list, loss_fn): the loss_fn appends the logits of every training batch to the list."""
    seen = []

    def capture(logits, y):
        if len(y) == BATCH:  # training batches only
            seen.append(logits.detach().clone())
        return F.cross_entropy(logits, y)

    return seen, capture


# ------------------------------------------------------------------ bf16
def test_bf16_forward_is_torch_autocast_and_parameters_stay_fp32():
    task = make_task()
    model = mlp()
    ref = copy.deepcopy(model)
    seen, capture = logits_seen()
    odt.train(model, task, odt.plan(model, "full", precision="bf16"), optimizer="sgd", lr=0.1,
              batch_size=BATCH, seed=SEED, max_steps=1, loss_fn=capture, progress=False)
    (x, y), = first_batches(task, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = ref(x)
        loss = F.cross_entropy(logits, y)
    assert seen[0].dtype == torch.bfloat16 and torch.equal(seen[0], logits)
    loss.backward()
    torch.optim.SGD(ref.parameters(), lr=0.1).step()
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)


# ------------------------------------------------------------------ fp8
@pytest.mark.parametrize("f8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_cast_is_the_scaled_float8_round_trip(f8):
    x = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.equal(fp8_cast(x, f8), q_ref(x, f8))
    fmax = torch.finfo(f8).max
    exact = torch.tensor([fmax, -fmax, 1.5, -0.25, 0.0, 3.0, 0.5])  # scale 1, on the grid
    assert torch.equal(fp8_cast(exact, f8), exact)
    assert torch.equal(fp8_cast(torch.zeros(3), f8), torch.zeros(3))
    assert not torch.equal(fp8_cast(x, f8), x)  # it does round


def test_fp8_casts_inputs_weights_and_their_gradients():
    torch.manual_seed(1)
    lin = nn.Linear(6, 4)
    x = torch.randn(5, 6, requires_grad=True)
    g = torch.randn(5, 4)
    with fp8_autocast("fp8-e4m3"):
        out = lin(x)
    out.backward(g)
    f8 = torch.float8_e4m3fn
    xq, wq = q_ref(x.detach(), f8), q_ref(lin.weight.detach(), f8)
    assert torch.equal(out, F.linear(xq, wq, lin.bias))
    assert torch.equal(lin.weight.grad, q_ref(g.t() @ xq, f8))  # weight gradient in fp8
    assert torch.equal(x.grad, q_ref(g @ wq, f8))  # the gradient sent to the layer before
    assert torch.equal(lin.bias.grad, g.sum(0))  # biases stay float32


def test_train_in_fp8_computes_the_hand_forward():
    task = make_task()
    model = mlp()
    ref = copy.deepcopy(model)
    seen, capture = logits_seen()
    hist = odt.train(model, task, odt.plan(model, "full", precision="fp8-e5m2"), lr=0.1,
                     batch_size=BATCH, seed=SEED, max_steps=2, loss_fn=capture, progress=False)
    (x, _), = first_batches(task, 1)
    f8 = torch.float8_e5m2
    h = F.relu(F.linear(q_ref(x.flatten(1), f8), q_ref(ref[1].weight, f8), ref[1].bias))
    want = F.linear(q_ref(h, f8), q_ref(ref[3].weight, f8), ref[3].bias)
    assert torch.equal(seen[0], want)
    assert hist.precision == "fp8-e5m2" and hist.loss_scale == []
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ------------------------------------------------------------------ int8
def int8_model() -> odt.quant.Int8Model:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(64, 3))
    return to_int8(net, make_task().x_train[:64])


def test_int8_training_keeps_integers_in_range_and_history_says_so():
    model = int8_model()
    hist = odt.train(model, make_task(), odt.plan(model, "full", precision="int8"), lr=0.5,
                     batch_size=BATCH, seed=SEED, epochs=2, qas=True, progress=False)
    for path, layer in model.layers().items():
        w, b = layer.weight, layer.bias
        assert torch.equal(w, w.round()) and w.abs().max() <= 127, path
        assert torch.equal(b, b.round()) and b.abs().max() < 2**31, path
    assert hist.precision == "int8" and hist.qas and "int8 + QAS" in repr(hist)
    assert odt.History.from_dict(hist.as_dict()) == hist
    assert not any(p._backward_hooks for p in model.parameters())  # QAS removed after


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-m", "adam"])
def test_qas_scales_the_gradients_by_s_w_and_the_step_follows(optimizer):
    task, lr = make_task(), (0.5 if optimizer == "adam" else 0.05)
    runs = {}
    for qas in (False, True):
        model = int8_model()
        odt.train(model, task, odt.plan(model, "full", precision="int8"), lr=lr,
                  optimizer=optimizer, batch_size=BATCH, seed=SEED, max_steps=1, qas=qas,
                  progress=False)
        runs[qas] = model
    ref = int8_model()
    factors = qas_scales(ref)
    (x, y), = first_batches(task, 1)
    F.cross_entropy(ref(x), y).backward()
    for name, p in ref.named_parameters():  # QAS by hand: s_W^-2 (weights), (s_W s_x)^-2
        torch.testing.assert_close(dict(runs[True].named_parameters())[name].grad,
                                   p.grad * factors[name])
        torch.testing.assert_close(dict(runs[False].named_parameters())[name].grad, p.grad)
        p.grad = p.grad * factors[name]
    opt = {"sgd": lambda ps: torch.optim.SGD(ps, lr=lr),
           "sgd-m": lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9),
           "adam": lambda ps: torch.optim.Adam(ps, lr=lr)}[optimizer](list(ref.parameters()))
    opt.step()
    ref.round_("nearest")
    moved = 0
    for (name, a), b in zip(runs[True].named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b), name
        moved += int((a != dict(int8_model().named_parameters())[name]).sum())
    assert moved > 0  # the step changed some integers


# ------------------------------------------------------------------ bad input
def test_bad_precision_input_is_refused_with_the_fix():
    model, task = mlp(), make_task()
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'.*fp8-e4m3.*Valid choices"):
        odt.plan(model, "full", precision="fp8")
    with pytest.raises(ValueError, match="unknown precision 'fp12'"):
        precision_info("fp12")
    with pytest.raises(ValueError, match=r"qas=True.*'fp32'.*precision='int8'"):
        odt.train(model, task, "full", qas=True, progress=False)
    with pytest.raises(ValueError, match=r"qas=True.*'bf16'"):
        odt.train(model, task, odt.plan(model, "full", precision="bf16"), qas=True,
                  progress=False)
    with pytest.raises(TypeError, match=r"got a Sequential.*odt.quant.to_int8"):
        odt.train(model, task, odt.plan(model, "full", precision="int8"), progress=False)
    with pytest.raises(ValueError, match=r"plan trains in 'bf16' but precision='fp16'"):
        odt.train(model, task, odt.plan(model, "full", precision="bf16"), precision="fp16",
                  progress=False)
    with pytest.raises(ValueError, match=r"Int8Model trains .* precision='int8'.*got 'fp32'"):
        odt.train(int8_model(), task, odt.plan(int8_model(), "full"), progress=False)
    with pytest.raises(ValueError, match=r"float32 master weights.*float16.*model.float\(\)"):
        odt.train(mlp().half(), task, "full", precision="fp16", progress=False)


def test_precision_info_describes_each_precision():
    assert odt.PRECISIONS == ("fp32", "bf16", "fp16", "fp8-e4m3", "fp8-e5m2", "int8")
    fp16, e4m3 = precision_info("fp16"), precision_info("FP8_E4M3")
    assert (fp16.weight_bytes, fp16.master_weights, fp16.loss_scaler) == (2, True, True)
    assert e4m3.fp8_max == 448.0 and precision_info("fp8-e5m2").fp8_max == 57344.0
    assert precision_info("int8").profile_dtype == "int8" and not precision_info("int8").master_weights
    assert precision_info("bf16").profile_note and not precision_info("fp32").profile_note
