"""The capstone's pipeline: plan on-device training for a catalogue device, end to end.

    cap = Capstone(epochs=1)
    print(cap.card("stm32f746"))   # precision -> searched plan -> fleet compressor -> train

Each step calls the library: the precision whose full-update step has the shortest
roofline on the device (``odt.estimate`` + ``device.fit``); ``odt.sparse.search`` of the
shipped contribution table under the device's RAM, rebuilt at that precision; the least
lossy ``FLEET`` compressor whose upload of the plan's trained gradient (``nbytes``) fits
``round_budget_s`` on the device's link (``transfer_s``); ``odt.train``, once per distinct
plan. The task is lab 03's: mcunet-tiny, pretrained, fine-tuned on digits-shift.
"""

from __future__ import annotations

import copy
import functools
import html
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_positive_int, check_real, lookup
from ..units import format_bytes, format_seconds

__all__ = ["Capstone", "ReportCard", "PrecisionChoice", "FleetChoice", "FLEET", "LINK_BY_KIND",
           "TRAIN_PRECISIONS", "choose_precision", "usable_precisions", "engine_of",
           "describe_scheme", "trained_gradient", "round_bytes", "choose_compressor",
           "round_time_figure"]

CAPSTONE_MODEL, CAPSTONE_TASK = "mcunet-tiny", "digits-shift"
# Precisions odt.train runs on a float model, in the order a tie is broken (fp32 first: the
# lean engine and no rounding). int8 needs the int8 graph (lab 02), fp8 is simulated here.
TRAIN_PRECISIONS = ("fp32", "fp16", "bf16")
# The link a device of each kind uses to reach its fleet (a modelling choice, not a spec):
# a microcontroller talks over Bluetooth LE, a board or laptop over Wi-Fi, a module is wired.
LINK_BY_KIND = {"mcu": "ble", "sbc": "wifi", "laptop": "wifi", "gpu-module": "ethernet",
                "phone": "lte"}
# Fleet compressors, least lossy first (odt.compress.get keywords); lab 05 measures their cost.
FLEET: dict[str, dict[str, Any]] = {
    "dense fp32": {"name": "none"},
    "fp16": {"name": "fp16"},
    "top-k 1% + EF": {"name": "topk", "density": 0.01, "error_feedback": True},
    "top-k 0.1% + EF": {"name": "topk", "density": 0.001, "error_feedback": True},
}


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a device trains in. ``options`` maps each precision the device has a
    peak for to (peak bytes, roofline seconds) of one full-update step at batch 1 in it."""

    device: str
    precision: str
    options: dict[str, tuple[int, float]]

    @property
    def engine(self) -> str:
        return engine_of(self.precision)


def engine_of(precision: str) -> str:
    """The lean engine runs fp32 steps only; reduced precisions run on stock autograd."""
    return "lean" if precision == "fp32" else "pytorch"


def usable_precisions(device: Any) -> list[str]:
    """The ``TRAIN_PRECISIONS`` whose arithmetic (``profile_dtype``) has a peak on
    ``device``; a ValueError naming the device's dtypes when there is none."""
    from ..hardware import device as get_device
    from ..quant import precision_info

    dev = get_device(device)
    usable = [p for p in TRAIN_PRECISIONS
              if precision_info(p).profile_dtype in dev.peak_macs_per_s]
    if not usable:
        raise ValueError(f"{dev.name} has peaks for {', '.join(dev.peak_macs_per_s) or 'nothing'}"
                         f" only; training here needs one of {', '.join(TRAIN_PRECISIONS)} "
                         "(int8 training needs the int8 graph of lab 02). Pick another device")
    return usable


def choose_precision(device: Any, model: nn.Module, x: torch.Tensor,
                     optimizer: str = "sgd-m") -> PrecisionChoice:
    """The usable precision whose full-update step (``odt.estimate`` at batch ``x``) has the
    shortest roofline on ``device``; within 1% of the fastest, the first of
    ``TRAIN_PRECISIONS`` wins (a memory-bound step gains nothing from a faster unit)."""
    from ..hardware import device as get_device
    from ..memory import estimate
    from ..plans import plan as make_plan

    dev = get_device(device)
    options = {}
    for precision in usable_precisions(dev):
        full = make_plan(model, "full", norm_stats="frozen", precision=precision)
        report = estimate(model, x, full, optimizer=optimizer, engine=engine_of(precision))
        fit = dev.fit(report)
        if fit.step_time_s is None:
            raise ValueError(f"{dev.name} gives no roofline step time at {precision}: "
                             f"{fit.verdict}")
        options[precision] = (int(report.peak_bytes), fit.step_time_s)
    fastest = min(s for _, s in options.values())
    chosen = next(p for p in options if options[p][1] <= 1.01 * fastest)
    return PrecisionChoice(dev.name, chosen, options)


def trained_gradient(model: nn.Module, task: Any, plan: Any,
                     samples: int = 32) -> dict[str, torch.Tensor]:
    """{parameter: the gradient of the entries ``plan`` trains} (1-D for a channel-sparse
    tensor: only its selected channels travel) from one real backward of the cross-entropy
    on the first ``samples`` training images; ``model`` is not changed."""
    check_positive_int("samples", samples)
    work = plan.apply_(copy.deepcopy(model))
    with plan.norm_mode(work):
        F.cross_entropy(work(task.x_train[:samples]), task.y_train[:samples]).backward()
    masks = plan.masks()
    grads = {}
    for name, p in work.named_parameters():
        if name in plan.trainable:
            g = p.grad.detach() if p.grad is not None else torch.zeros_like(p)
            grads[name] = g[masks[name]] if name in masks else g
    return grads


def round_bytes(grads: dict[str, torch.Tensor], compressor: str) -> int:
    """Bytes one device uploads per round: the sum over tensors of ``nbytes`` of the payload
    the ``FLEET`` compressor called ``compressor`` makes of each gradient."""
    from .. import compress

    kwargs = dict(FLEET[lookup("fleet compressor", compressor, FLEET)])
    comp = compress.get(kwargs.pop("name"), **kwargs)
    return sum(comp.nbytes(comp.compress(g, name)[0]) for name, g in grads.items())


@dataclass(frozen=True)
class FleetChoice:
    """The compressor for a fleet on ``link``: ``options`` maps every ``FLEET`` label to its
    (bytes per round, seconds per round); ``label`` is the first within the budget, else
    the smallest (``fits`` False)."""

    link: str
    budget_s: float
    label: str
    options: dict[str, tuple[int, float]]

    @property
    def bytes_per_round(self) -> int:
        return self.options[self.label][0]

    @property
    def round_s(self) -> float:
        return self.options[self.label][1]

    @property
    def fits(self) -> bool:
        return self.round_s <= self.budget_s


def choose_compressor(grads: dict[str, torch.Tensor], link: Any,
                      round_budget_s: float) -> FleetChoice:
    """The least lossy ``FLEET`` compressor whose upload of ``grads`` takes at most
    ``round_budget_s`` on ``link`` (``transfer_s``: latency + bits / throughput)."""
    from ..hardware import link as get_link

    check_real("round_budget_s", round_budget_s, low=0, low_open=True)
    net = get_link(link)
    options = {}
    for label in FLEET:
        nbytes = round_bytes(grads, label)
        options[label] = (nbytes, net.transfer_s(nbytes))
    fitting = [k for k, (_, s) in options.items() if s <= round_budget_s]
    label = fitting[0] if fitting else min(options, key=lambda k: options[k][0])
    return FleetChoice(net.name, float(round_budget_s), label, options)


def describe_scheme(found: Any) -> str:
    """A searched scheme in a few words: how many biases, how many weights, how sparse."""
    sparse = sum(1 for _, ratio in found.weights if ratio < 1)
    parts = [f"biases of the last {found.biases} layers"] if found.biases else []
    if found.weights:
        parts.append(f"weights of {len(found.weights)} layers ({sparse} channel-sparse)")
    return " + ".join(parts) or "no update"


@dataclass(frozen=True)
class ReportCard:
    """What planning on-device training for one device gives, every number from a real call.

    ``peak_bytes``: ``odt.estimate``'s peak of ``plan``; ``need_bytes`` of ``ram_bytes``:
    what ``device.fit`` puts in RAM (``memory``; on a microcontroller the frozen weights run
    from flash); ``step_s``: the roofline of one training step at batch 1 on the device at
    ``dtype``; ``accuracy`` after ``epochs`` of ``odt.train`` (``baseline_acc`` untrained).
    """

    device: str
    precision: str
    engine: str
    dtype: str
    plan: Any
    scheme: str
    peak_bytes: int
    need_bytes: int
    ram_bytes: int
    memory: str
    fits: bool
    verdict: str
    step_s: float
    accuracy: float
    baseline_acc: float
    epochs: int
    compressor: str
    link: str
    bytes_per_round: int
    round_s: float
    round_budget_s: float

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, in the order the card shows them."""
        fit = "fits" if self.fits else "DOES NOT FIT"
        return [
            ("device", self.device),
            ("precision", f"{self.precision} ({self.dtype} peak, {self.engine} engine)"),
            ("plan", f"{self.scheme}; trains {self.plan.trainable_numel:,} of "
                     f"{self.plan.total_numel:,} parameters"),
            ("peak memory", f"{format_bytes(self.peak_bytes)} estimated; "
                            f"{self.memory.upper()} {format_bytes(self.need_bytes)} of "
                            f"{format_bytes(self.ram_bytes)}: {fit}"),
            ("accuracy", f"{100 * self.accuracy:.1f}% after {self.epochs} epoch(s) "
                         f"(untrained {100 * self.baseline_acc:.1f}%)"),
            ("time per step", f"{format_seconds(self.step_s)} (batch 1, {self.dtype} roofline)"),
            ("compressor", f"{self.compressor} (round budget "
                           f"{format_seconds(self.round_budget_s)} on {self.link})"),
            ("bytes per round", f"{self.bytes_per_round:,} B up per device"),
            ("time per round", f"{format_seconds(self.round_s)} on {self.link}"),
        ] + ([] if self.fits else [("why", self.verdict)])

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def _repr_html_(self) -> str:
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
                        for k, v in self.rows())
        return f"<table>{cells}</table>"


class Capstone:
    """The capstone's model, task and contribution table, and the pipeline per device.

    Searches, plans and fleet choices are cached per device, training once per distinct
    (plan, engine): switching devices that share a plan trains nothing new.
    """

    def __init__(self, *, epochs: int = 1, round_budget_s: float = 0.5, lr: float = 0.05,
                 batch_size: int = 32, seed: int = 0) -> None:
        from ..datasets import load
        from ..models import create, example_input
        from ..sparse import contributions

        self.epochs = check_positive_int("epochs", epochs)
        self.round_budget_s = check_real("round_budget_s", round_budget_s, low=0,
                                         low_open=True)
        self.settings = {"lr": lr, "batch_size": check_positive_int("batch_size", batch_size),
                         "seed": seed, "optimizer": "sgd-m"}
        self.task = load(CAPSTONE_TASK)
        self.pretrained = create(CAPSTONE_MODEL, pretrained=True)
        self.x = example_input(self.pretrained, batch_size=1)  # a device trains at batch 1
        self.table = contributions(self.pretrained, self.task)  # the shipped table
        self._trained: dict[tuple[Any, str], Any] = {}

    def excluded(self) -> dict[str, str]:
        """{catalogue device: why the capstone cannot plan for it}."""
        from ..hardware import device, devices

        out = {}
        for dev in map(device, devices()):
            try:
                usable_precisions(dev)
                if dev.bandwidth_bytes_per_s is None:
                    out[dev.name] = f"{dev.name} has no memory bandwidth in its profile: no roofline"
            except ValueError as err:
                out[dev.name] = str(err).split("; ")[0] + ": no float training"
        return out

    def devices(self) -> list[str]:
        """The catalogue devices the capstone plans for (see ``excluded`` for the rest)."""
        from ..hardware import devices

        return [name for name in devices() if name not in self.excluded()]

    def check_device(self, device: str) -> str:
        """The catalogue name of ``device``; a ValueError saying why the capstone cannot plan
        for it and naming the devices it can (a typo gets the catalogue's suggestions)."""
        from ..hardware import device as get_device

        name, why = get_device(device).name, self.excluded()
        if name in why:
            raise ValueError(f"{why[name]}. The capstone plans for: {', '.join(self.devices())}.")
        return name

    @functools.cache  # noqa: B019 (one Capstone per notebook)
    def precision(self, device: str) -> PrecisionChoice:
        """``choose_precision`` for the device, on the pretrained model at batch 1."""
        return choose_precision(self.check_device(device), self.pretrained, self.x,
                                self.table.settings_dict["optimizer"])

    @functools.cache  # noqa: B019
    def search(self, device: str) -> Any:
        """``odt.sparse.search`` of the table under the device's RAM."""
        from ..sparse import search

        return search(self.pretrained, table=self.table, device=self.check_device(device))

    @functools.cache  # noqa: B019
    def plan(self, device: str) -> tuple[Any, Any, Any]:
        """(TrainPlan at the device's precision, its estimate, ``device.fit`` of it)."""
        from ..hardware import device as get_device
        from ..memory import estimate
        from ..sparse import plan as sparse_plan

        found, choice = self.search(device), self.precision(device)
        s = self.table.settings_dict
        plan = sparse_plan(self.pretrained, biases=found.biases, weights=found.weights_dict,
                           criterion=s["criterion"], seed=s["seed"], precision=choice.precision)
        report = estimate(self.pretrained, self.x, plan, optimizer=s["optimizer"],
                          engine=choice.engine)
        return plan, report, get_device(device).fit(report)

    @functools.cache  # noqa: B019
    def fleet(self, device: str, link: str | None = None) -> FleetChoice:
        """The fleet compressor for the device's plan on ``link`` (default: its kind's)."""
        from ..hardware import device as get_device

        link = link or LINK_BY_KIND[get_device(device).kind]
        grads = trained_gradient(self.pretrained, self.task, self.plan(device)[0])
        return choose_compressor(grads, link, self.round_budget_s)

    def train(self, plan: Any, engine: str) -> Any:
        """``odt.train`` of a fresh pretrained copy under ``plan`` (cached per plan)."""
        from ..training import train

        key = (plan, engine)
        if key not in self._trained:
            model = copy.deepcopy(self.pretrained)
            self._trained[key] = train(model, self.task, plan, epochs=self.epochs,
                                       engine=engine, progress=False, **self.settings)
        return self._trained[key]

    @property
    def trainings(self) -> int:
        """How many distinct (plan, engine) trainings ran so far."""
        return len(self._trained)

    def card(self, device: str, link: str | None = None) -> ReportCard:
        """The report card of ``device`` (every step above, then training)."""
        choice = self.precision(device)
        plan, report, fit = self.plan(device)
        fleet = self.fleet(device, link)
        history = self.train(plan, choice.engine)
        ram = next(c for c in fit.checks if c.memory != "flash")  # frozen weights: flash
        return ReportCard(
            device=fit.device, precision=choice.precision, engine=choice.engine,
            dtype=fit.dtype, plan=plan, scheme=describe_scheme(self.search(device)),
            peak_bytes=int(report.peak_bytes),
            need_bytes=ram.needed_bytes, ram_bytes=ram.available_bytes, memory=ram.memory,
            fits=fit.fits, verdict=fit.verdict,
            step_s=fit.step_time_s, accuracy=history.test_acc[-1],
            baseline_acc=self.table.baseline_acc, epochs=self.epochs,
            compressor=fleet.label, link=fleet.link, bytes_per_round=fleet.bytes_per_round,
            round_s=fleet.round_s, round_budget_s=fleet.budget_s)


def round_time_figure(fleet: FleetChoice, title: str = "") -> Any:
    """Bars of each fleet compressor's round time on the link (linear axis), the budget as
    a dashed line, the chosen one filled."""
    import matplotlib.pyplot as plt

    labels = list(fleet.options)
    seconds = [fleet.options[k][1] for k in labels]
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for i, (label, s) in enumerate(zip(labels, seconds, strict=True)):
        ax.barh(i, s, color=colors[i % 4], hatch="" if label == fleet.label else "//",
                alpha=1.0 if label == fleet.label else 0.45, edgecolor="black")
        ax.text(s, i, f" {format_bytes(fleet.options[label][0])}", va="center", fontsize=9)
    ax.axvline(fleet.budget_s, color="black", linestyle="--", label="round budget")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds per round on {fleet.link} (upload)")
    ax.set_xlim(0, 1.25 * max(*seconds, fleet.budget_s))
    ax.set_title(title or f"fleet compressor: {fleet.label}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
