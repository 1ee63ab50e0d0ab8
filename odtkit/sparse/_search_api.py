"""Search the sparse-update scheme with the largest summed contribution under a budget of
training memory or of trained parameters.

    res = odt.sparse.search(model, task, budget_bytes=300_000)
    res = odt.sparse.search(model, table=table, budget_share=0.151)   # of the parameters
    res = odt.sparse.search(model, table=table, device="stm32f746", method="both")
    res.plan, res.report.peak_bytes, res.predicted_gain, res.compared

A scheme is the biases of the last k layers plus a channel ratio (or nothing) per layer, as
in "On-Device Training Under 256KB Memory" (Lin et al., 2022). Its predicted gain is the sum
of its options' gains in a ContributionTable; under a memory budget it fits when
``odt.estimate`` of the real combined plan (not the sum of the parts) is within the budget.
Every result carries the estimate of its plan (``report``), whatever the budget.

The budget, given one way exactly:
- ``budget_bytes``: the estimate's ``peak_bytes`` must not exceed it.
- ``budget_share``: a share in (0, 1] of the model's parameters: the plan's trained
  parameters (``plan.trainable_numel``, of a channel-sparse weight the selected channels')
  must not exceed ``odt.sparse.budget_params(model, budget_share)``, the count neuron
  selection uses. Options train disjoint parameters, so the knapsack is exact here and
  only the chosen plan is estimated.
- ``budget_peak_share``: a share in (0, 1] of the peak of the full update (every parameter
  trains, norm statistics frozen) at the same batch, engine, optimizer and precision; the
  estimate's ``peak_bytes`` must not exceed that many bytes.
- ``device``: the budget is the RAM ``device.fit`` checks (SRAM on a microcontroller, DRAM
  elsewhere), and a plan's need is what ``fit`` puts there: on a microcontroller with a known
  flash size the frozen weights run from flash, so the need is ``peak_bytes -
  frozen_weight_bytes``; elsewhere the whole peak. A result then satisfies
  ``device.fit(result.report).fits``.
The smallest memory budget is the need of the plan "none" (inference alone); below it no
scheme fits and the search says so. A parameter budget is never too small: the plan "none"
trains nothing.

Methods: "knapsack" (a dynamic program over the options' costs, by bytes at a resolution of
``resolution_bytes`` with the options' guide costs, its solutions verified with the real
estimate and repaired by dropping the option of least gain per byte until one fits; by
parameters exact), "evolution" (a seeded evolutionary search with the real need as the
constraint) or "both" (each run; the result is the larger predicted gain,
the knapsack's on a tie, and ``compared`` holds the two).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._checks import check_choice, check_int, check_positive_int, check_seed
from ..hardware import DeviceProfile
from ..hardware import device as find_device
from ..hardware.fit import ram_of
from ..memory import MemoryReport, estimate
from ..models import example_input
from ..plans import TrainPlan
from ..plans import plan as make_plan
from ..units import format_bytes
from ._contrib_analysis import contributions, model_fingerprint, model_name
from ._contrib_table import ContributionTable
from ._search_evolution import evolution_search
from ._search_space import Genome, Metric, Space, knapsack_search
from .budget import budget_params, check_share

__all__ = ["search", "SearchResult", "METHODS"]

METHODS = ("knapsack", "evolution", "both")


@dataclass(frozen=True)
class SearchResult:
    """The scheme a search chose, its plan and estimate, and the budget it was held to.

    ``budget_by``: "bytes", "params", "peak-share" or "device"; ``budget_note`` says how the
    number came. A memory budget is ``budget_bytes`` (``budget_params`` None), a parameter
    budget ``budget_params`` (``budget_bytes`` None). ``need_bytes``: the memory need (the
    peak, or the RAM need on a device; what a memory budget checks); ``trainable_params``
    of ``total_params``: what the plan trains (what a parameter budget checks);
    ``min_bytes``: the memory need of inference alone; ``guide``: the options' own costs
    added up in the budget's unit (bytes: the knapsack's guide, not a memory figure of the
    plan; parameters: exactly ``trainable_params``). ``evaluated``: distinct plans
    estimated. ``compared``: for method="both", the knapsack's and the evolution's results.
    """

    plan: TrainPlan
    report: MemoryReport
    biases: int
    weights: tuple[tuple[str, float], ...]
    predicted_gain: float
    baseline_acc: float
    budget_bytes: int | None
    budget_params: int | None
    budget_by: str
    budget_note: str
    need_bytes: int
    trainable_params: int
    total_params: int
    min_bytes: int
    guide: int
    method: str
    evaluated: int
    compared: tuple[SearchResult, ...] = field(default=())

    @property
    def predicted_acc(self) -> float:
        """Baseline plus the summed gains: a score for ranking schemes, not an accuracy
        (gains measured one option at a time overlap, so the sum can pass 1). Train the
        plan to know its accuracy."""
        return self.baseline_acc + self.predicted_gain

    @property
    def headroom_bytes(self) -> int | None:
        """Bytes left under a memory budget (None under a parameter budget)."""
        return None if self.budget_bytes is None else self.budget_bytes - self.need_bytes

    @property
    def headroom_params(self) -> int | None:
        """Parameters left under a parameter budget (None under a memory budget)."""
        return None if self.budget_params is None else self.budget_params - self.trainable_params

    @property
    def weights_dict(self) -> dict[str, float]:
        return dict(self.weights)

    def describe(self) -> str:
        """One line: the scheme, its predicted gain, and its need against the budget."""
        parts = [f"biases of the last {self.biases}"] if self.biases else []
        parts += [f"{layer}@{ratio:g}" for layer, ratio in self.weights]
        scheme = ", ".join(parts) or "no update"
        head = f"{self.method}: {scheme}; predicted gain {100 * self.predicted_gain:+.1f} points"
        if self.budget_params is not None:
            return (f"{head}; trains {self.trainable_params:,} of {self.budget_params:,} "
                    f"parameters allowed ({self.budget_note}); training peak "
                    f"{format_bytes(self.report.peak_bytes)}")
        return (f"{head}; needs {format_bytes(self.need_bytes)} of "
                f"{format_bytes(self.budget_bytes)} ({self.budget_note})")

    def __str__(self) -> str:
        return self.describe()


def _budget(model: nn.Module, x: Any, table: ContributionTable, given: dict[str, Any],
            optimizer: str, engine: str) -> tuple[int, str, str, Metric | None, Any]:
    """(budget, budget_by, note, metric, device); metric None: a budget of parameters."""
    named = [name for name, v in given.items() if v is not None]
    if len(named) != 1:
        how = "none was" if not named else f"{' and '.join(named)} were"
        raise ValueError(f"give the budget exactly one way: budget_bytes=..., budget_share=... "
                         f"(of the parameters), budget_peak_share=... (of the full update's "
                         f"peak) or device=... ; {how} given")
    peak_only: Metric = lambda peak, frozen: peak  # noqa: E731
    if given["budget_bytes"] is not None:
        value = check_int("budget_bytes", given["budget_bytes"], low=1)
        return value, "bytes", f"peak within {format_bytes(value)}", peak_only, None
    if given["budget_share"] is not None:
        share = check_share(given["budget_share"])
        value = budget_params(model, share)
        total = make_plan(model, "none").total_numel
        return (value, "params", f"{100 * share:.4g}% of the parameters ({value:,} of {total:,})",
                None, None)
    if given["budget_peak_share"] is not None:
        share = check_share(given["budget_peak_share"], name="budget_peak_share")
        full = make_plan(model, "full", norm_stats="frozen",
                         precision=table.settings_dict["precision"])
        full_peak = int(estimate(model, x, full, optimizer=optimizer, engine=engine).peak_bytes)
        value = int(share * full_peak)
        return (value, "peak-share", f"{100 * share:.4g}% of the full update's peak "
                f"{format_bytes(full_peak)}", peak_only, None)
    device = given["device"]
    dev = device if isinstance(device, DeviceProfile) else find_device(device)
    memory, available = ram_of(dev)
    in_flash = dev.kind == "mcu" and dev.flash_bytes is not None  # as fit() decides
    if in_flash:
        if table.none_frozen_weight_bytes > dev.flash_bytes:
            raise ValueError(f"{dev.name}: the frozen weights ({format_bytes(table.none_frozen_weight_bytes)}) "
                             f"do not fit its flash ({format_bytes(dev.flash_bytes)}); pick a "
                             "smaller model or a larger device")
        metric: Metric = lambda peak, frozen: peak - frozen  # noqa: E731
        note = f"{dev.name} {memory.upper()}; frozen weights in flash"
    else:
        metric, note = peak_only, f"{dev.name} {memory.upper()}"
    return available, "device", note, metric, dev


def search(model: nn.Module, task: Any = None, budget_bytes: int | None = None,
           budget_share: float | None = None, device: str | DeviceProfile | None = None, *,
           budget_peak_share: float | None = None, table: ContributionTable | None = None, method: str = "knapsack",
           engine: str = "lean", optimizer: str = "sgd-m", batch_size: int = 1, seed: int = 0,
           resolution_bytes: int = 64, population: int = 24,
           generations: int = 30) -> SearchResult:
    """The scheme of largest summed contribution whose estimated training step (or, with
    ``budget_share``, whose trained parameters) fits the budget (see the module's text for
    the budget rules and the methods).

    ``table``: a ContributionTable for this model (its weights), ``engine``, ``optimizer``
    and ``batch_size``; when None it comes from ``contributions(model, task, ...)`` (the
    cached one where it matches). ``resolution_bytes``: the knapsack's cost unit under a
    memory budget.
    ``population``, ``generations`` and ``seed``: the evolution's.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice("method", method, METHODS)
    check_positive_int("batch_size", batch_size)
    check_positive_int("resolution_bytes", resolution_bytes)
    check_seed("seed", seed)
    if table is None:
        if task is None:
            raise ValueError("search needs task=... (to measure contributions) or table=... "
                             "(a ContributionTable from odt.sparse.contributions)")
        table = contributions(model, task, engine=engine, optimizer=optimizer,
                              batch_size=batch_size)
    if not isinstance(table, ContributionTable):
        raise TypeError(f"table must be a ContributionTable, got {type(table).__name__}")
    table.check(model=model_name(model), model_fingerprint=model_fingerprint(model),
                task=None if task is None else task.name, engine=engine, optimizer=optimizer,
                batch_size=batch_size)
    x = example_input(model, batch_size=batch_size)
    budget, by, note, metric, dev = _budget(
        model, x, table, {"budget_bytes": budget_bytes, "budget_share": budget_share,
                          "budget_peak_share": budget_peak_share, "device": device},
        optimizer, engine)
    def space() -> Space:  # one per method, so each counts its own estimates
        return Space(model, table, metric, budget, optimizer, engine, batch_size)

    probe = space()
    minimum = probe.need(probe.empty)  # by parameters: 0, the plan "none" trains nothing
    if budget < minimum:
        raise ValueError(f"budget {format_bytes(budget)} ({budget} B, {note}) is below what "
                         f"inference alone needs: {format_bytes(minimum)} ({minimum} B, the "
                         f"estimate of the plan 'none'); give a budget of at least {minimum} B")
    runs = {}
    if method in ("knapsack", "both"):
        runs["knapsack"] = (probe, knapsack_search(probe, resolution_bytes))
    if method in ("evolution", "both"):
        evo = space()
        runs["evolution"] = (evo, evolution_search(evo, seed=seed, population=population,
                                                   generations=generations))
    min_bytes = table.none_peak_bytes if metric is None else minimum
    results = {name: _result(where, genome, name, by, note, min_bytes)
               for name, (where, genome) in runs.items()}
    if dev is not None:
        for res in results.values():
            assert dev.fit(res.report).fits, res.describe()
    if method != "both":
        return results[method]
    pick = max(results.values(), key=lambda r: (r.predicted_gain, r.method == "knapsack"))
    return _replace(pick, method="both", compared=(results["knapsack"], results["evolution"]))


def _result(space: Space, genome: Genome, method: str, by: str, note: str,
            min_bytes: int) -> SearchResult:
    biases, weights = space.scheme(genome)
    plan, report = space.plan(genome), space.report(genome)  # the chosen plan's estimate
    need_bytes = (int(report.peak_bytes) if space.metric is None
                  else space.metric(int(report.peak_bytes), int(report.frozen_weight_bytes)))
    return SearchResult(
        plan=plan, report=report, biases=biases, weights=tuple(weights.items()),
        predicted_gain=space.gain(genome), baseline_acc=space.table.baseline_acc,
        budget_bytes=None if space.by_params else space.budget,
        budget_params=space.budget if space.by_params else None, budget_by=by,
        budget_note=note, need_bytes=need_bytes, trainable_params=plan.trainable_numel,
        total_params=plan.total_numel, min_bytes=min_bytes, guide=space.guide(genome),
        method=method, evaluated=space.evaluated)


def _replace(res: SearchResult, **changes: Any) -> SearchResult:
    from dataclasses import replace

    return replace(res, **changes)
