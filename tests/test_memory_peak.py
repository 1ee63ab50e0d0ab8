"""What is live at the peak: the estimate's components against one real step, tracked.

The reference runs a real training step (torch modules, torch.optim) and follows every
storage an aten op makes by weak reference, reading after each op which are alive and
sorting them: parameters and buffers (weights), storages autograd's saved-tensor hooks
saw (saved activations), the parameters' ``.grad`` (gradients), the optimizer's state,
and the rest (transient). Its peak point is compared with the estimate's.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.distributed._tools.mem_tracker import MemTracker
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import odtkit as odt
from odtkit.memory import PEAK_COMPONENTS, MemoryReport


class _Storages(TorchDispatchMode):
    """Every storage the step makes (a serial number each), and after every op the
    serials alive and which of them are gradients and optimizer state."""

    def __init__(self, params: list[torch.Tensor], opt: torch.optim.Optimizer) -> None:
        super().__init__()
        self.params, self.opt = params, opt
        self.refs: list[tuple[StorageWeakRef, int]] = []
        self.serial: dict[int, int] = {}  # storage address -> serial of the live storage there
        self.points: list[tuple[frozenset[int], set[int], frozenset[int]]] = []
        self.holders: dict[int, int] = {}  # serial -> packed copies autograd still holds

    def serial_of(self, t: torch.Tensor) -> int:
        storage = t.untyped_storage()
        k = self.serial.get(storage._cdata)
        if k is None or self.refs[k][0].expired():
            k = self.serial[storage._cdata] = len(self.refs)
            self.refs.append((StorageWeakRef(storage), storage.nbytes()))
        return k

    def point(self) -> None:
        alive = frozenset(k for k, (ref, _) in enumerate(self.refs) if not ref.expired())
        grads = frozenset(self.serial_of(p.grad) for p in self.params if p.grad is not None)
        held = {k for k, n in self.holders.items() if n}
        self.points.append((alive, held, grads))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.serial_of(t)
        self.point()
        return out


def reference_peak(model: torch.nn.Module, x: torch.Tensor, plan, optimizer: str,
                   engine: str) -> dict[str, int]:
    """The components alive at the peak of one real step, tracked storage by storage."""
    with plan.norm_mode(model) if model.training else contextlib.nullcontext():
        return _tracked_step(model, x, plan, optimizer, engine)


def _tracked_step(model, x, plan, optimizer, engine) -> dict[str, int]:
    work = odt.lean(model, plan) if engine == "lean" else plan.apply_(copy.deepcopy(model))
    params = [p for p in work.parameters() if p.requires_grad]
    opt = {"sgd": lambda: torch.optim.SGD(params, lr=0.01),
           "sgd-m": lambda: torch.optim.SGD(params, lr=0.01, momentum=0.9),
           "adam": lambda: torch.optim.Adam(params, lr=0.01, foreach=False)}[optimizer]()
    track = _Storages(params, opt)
    weights = {track.serial_of(t) for t in [*work.parameters(), *work.buffers()]}
    track.serial_of(x)

    class Held:  # what autograd keeps: its release (the node ran) is seen as it is freed
        def __init__(self, t: torch.Tensor, k: int) -> None:
            self.t, self.k = t, k
            track.holders[k] = track.holders.get(k, 0) + 1
            if track.points:  # saved as the op that made it returns: held at its point
                track.points[-1][1].add(k)

        def __del__(self) -> None:
            track.holders[self.k] -= 1

    def pack(t: torch.Tensor) -> object:
        k = track.serial_of(t)
        return t if k in weights else Held(t, k)

    def unpack(held: object) -> torch.Tensor:
        return held.t if isinstance(held, Held) else held

    with track:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            logits = work(x)
            labels = torch.arange(logits.shape[0]) % logits.shape[1]
            loss = F.cross_entropy(logits, labels)
            del logits
        loss.backward()
        del loss
        opt.step()
    live = [sum(track.refs[k][1] for k in alive) for alive, _, _ in track.points]
    i = max(range(len(live)), key=live.__getitem__)
    alive, held, grads = track.points[i]
    # the optimizer's state: what it keeps after the step, from the moment it is made
    state = {track.serial_of(t) for s in opt.state.values() for t in s.values()
             if isinstance(t, torch.Tensor)} & alive

    def total(keys) -> int:
        return sum(track.refs[k][1] for k in keys)

    held = (held & alive) - weights
    rest = alive - weights - held - grads - state
    return dict(zip(PEAK_COMPONENTS, (total(alive & weights), total(held), total(rest),
                                      total(grads), total(state)), strict=True))


CASES = [  # (model, input shape, batch, scheme, engine, optimizer, BN in train mode)
    ("mbv2-tiny", (3, 32, 32), 8, "bias-only", "lean", "sgd", True),  # the explorer's start
    ("mbv2-tiny", (3, 16, 16), 2, "full", "pytorch", "sgd-m", True),
    ("mcunet-tiny", (3, 16, 16), 2, "last:2", "pytorch", "adam", False),
    ("resnet8", (3, 16, 16), 2, "full", "lean", "sgd", True),
    ("ds-cnn", (10, 25), 4, "norm-only", "pytorch", "sgd", True),
    ("mlp", (1, 8, 8), 4, "full", "pytorch", "adam", True),
]


@pytest.mark.parametrize(("name", "shape", "batch", "scheme", "engine", "optimizer", "train"),
                         CASES)
def test_peak_components_match_a_tracked_real_step(name, shape, batch, scheme, engine,
                                                   optimizer, train):
    torch.manual_seed(0)
    model = odt.models.create(name, input_shape=shape).train(train)
    x = odt.models.example_input(model, batch_size=batch)
    plan = odt.plan(model, scheme)
    est = odt.estimate(model, x, plan, optimizer=optimizer, engine=engine)
    ref = reference_peak(model, x, plan, optimizer, engine)
    assert tuple(est.peak_components) == PEAK_COMPONENTS
    assert sum(est.peak_components.values()) == est.peak_bytes  # exactly the peak
    where = f"{name} {scheme} {engine} {optimizer}: est {est.peak_components} ref {ref}"
    assert sum(ref.values()) == pytest.approx(est.peak_bytes, rel=0.02), where
    for part in PEAK_COMPONENTS:  # each within 2 % of the peak, as the categories agree
        assert abs(est.peak_components[part] - ref[part]) <= 0.02 * est.peak_bytes, (part, where)
    assert est.peak_at.split(" ", 1)[0] in ("forward", "loss", "backward", "the")


def test_the_explorers_starting_point_is_set_by_transient_buffers():
    """Bias-only on the lean engine keeps little: the peak is the forward's live input and
    output of one layer, which the categories (kept after and during the step) never show."""
    model = odt.models.create("mbv2-tiny").train()
    x = odt.models.example_input(model, batch_size=8)
    est = odt.estimate(model, x, odt.plan(model, "bias-only", norm_stats="frozen"),
                       engine="lean")
    parts = est.peak_components
    assert max(parts, key=parts.get) == "transient"
    assert parts["transient"] > est.total_bytes > parts["weights"]
    assert est.peak_at.startswith("forward of ")


def test_int8_and_fp8_peaks_are_their_categories():
    model = odt.models.create("mlp")
    x = odt.models.example_input(model, batch_size=4)
    est = odt.estimate(model, x, odt.plan(model, "full", precision="fp8-e4m3"))
    c = est.by_category
    assert est.peak_components == {"weights": c["weights"], "saved activations": c["activations"],
                                   "transient": 0, "gradients": c["gradients"],
                                   "optimizer state": c["optimizer"]}
    # the int8 graph counted as a device keeps it: its peak is its categories too
    q = odt.quant.to_int8(model, torch.randn(16, *x.shape[1:]))
    est = odt.estimate(q, x, odt.plan(q, "full", precision="int8"), optimizer="sgd-m")
    c = est.by_category
    assert c["gradients"] > 0 and c["optimizer"] > 0 and c["activations"] > 0
    assert est.peak_components == {"weights": c["weights"], "saved activations": c["activations"],
                                   "transient": 0, "gradients": c["gradients"],
                                   "optimizer state": c["optimizer"]}


def test_a_report_refuses_components_that_miss_the_peak():
    kwargs = dict(by_category=dict.fromkeys(("weights", "gradients", "optimizer",
                                              "activations"), 1), peak_bytes=10,
                  frozen_weight_bytes=0, forward_macs=0, backward_macs=0, batch_size=1,
                  engine="pytorch", optimizer="sgd", method="estimate")
    parts = dict.fromkeys(PEAK_COMPONENTS, 2)
    assert MemoryReport(**kwargs, peak_components=parts).peak_components == parts
    with pytest.raises(ValueError, match="sum to 12 bytes, not the peak_bytes 10"):
        MemoryReport(**{**kwargs, "peak_bytes": 10}, peak_components=dict.fromkeys(
            PEAK_COMPONENTS, 2) | {"weights": 4})
    with pytest.raises(ValueError, match="needs exactly the keys"):
        MemoryReport(**kwargs, peak_components={"weights": 10})


@pytest.mark.parametrize(("name", "shape", "batch", "scheme", "engine", "optimizer", "train"),
                         [c for c in CASES if c[3] == "full"])  # MemTracker hooks every param
def test_weights_and_gradients_at_the_peak_match_memtracker(name, shape, batch, scheme, engine,
                                                             optimizer, train):
    """PyTorch's MemTracker at its own peak: parameters and buffers, and the parameters'
    gradients, are the estimate's weights and gradients there; its total is the peak.
    (It files what the optimizer step allocates as optimizer state and everything made in
    forward as activations, so the other components split differently.)"""
    torch.manual_seed(0)
    model = odt.models.create(name, input_shape=shape).train(train)
    x = odt.models.example_input(model, batch_size=batch)
    plan = odt.plan(model, scheme)
    est = odt.estimate(model, x, plan, optimizer=optimizer, engine=engine)
    with plan.norm_mode(model) if model.training else contextlib.nullcontext():
        work = odt.lean(model, plan) if engine == "lean" else plan.apply_(copy.deepcopy(model))
        opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.01),
               "sgd-m": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
               "adam": lambda p: torch.optim.Adam(p, lr=0.01, foreach=False)}[optimizer](
                   list(work.parameters()))
        tracker = MemTracker()
        tracker.track_external(work, opt)
        with tracker:
            logits = work(x)
            loss = F.cross_entropy(logits, torch.arange(logits.shape[0]) % logits.shape[1])
            del logits
            loss.backward()
            del loss
            opt.step()
    peak = {getattr(k, "name", k): v
            for k, v in tracker.get_tracker_snapshot("peak")[torch.device("cpu")].items()}
    parts = est.peak_components
    assert parts["weights"] == peak["PARAM"] + peak["BUFFER"]
    assert parts["gradients"] == peak["GRAD"]
    assert peak["Total"] == pytest.approx(est.peak_bytes, rel=0.02)
