"""The search space of a sparse-update search, and the knapsack over it.

A scheme is a genome: one option index per group. Group 0 is "biases of the last k
layers" (index 0: none, then the table's k's), each further group one layer's weights
(index 0: frozen, then the table's ratios). Every option carries its gain (from the
ContributionTable) and its cost, in one of two kinds of need:

- bytes: the option's guide cost is the bytes its own estimate needs beyond inference alone.
  The guide only steers; a scheme fits when ``odt.estimate`` of its real combined plan does.
- parameters: the option's cost is the number of parameters its plan trains (of a
  channel-sparse weight, the selected channels'). The options of a scheme train disjoint
  parameters (the biases of the last k layers; each layer's weight alone), so the costs add
  up exactly to the combined plan's ``trainable_numel``, which is the scheme's need; no
  estimate runs for a candidate.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from ..memory import MemoryReport, estimate
from ..models import example_input
from ._contrib_analysis import model_fingerprint, option_plan
from ._contrib_table import ContributionTable

Genome = tuple[int, ...]
Metric = Callable[[int, int], int]  # (peak_bytes, frozen_weight_bytes) -> bytes checked

# plans and estimates of the schemes searched so far, per model: searches at other budgets
# (an explorer's slider) meet the same candidates again. Plans are keyed by the scheme, the
# table's settings and the model's weights (magnitude criteria read them); estimates by the
# plan itself (its selected channels included) and what else the estimate depends on.
_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Any]] = weakref.WeakKeyDictionary()
_ESTIMATES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, MemoryReport]] = \
    weakref.WeakKeyDictionary()


class Space:
    """Genomes of ``table`` on ``model``: their schemes, gains, costs, and the need of each
    checked against ``budget``: with ``metric``, the real estimate (memoized) as ``metric``
    gives it, in bytes; with ``metric=None``, the plan's trained parameters."""

    def __init__(self, model: nn.Module, table: ContributionTable, metric: Metric | None,
                 budget: int, optimizer: str, engine: str, batch_size: int) -> None:
        self.model, self.table, self.metric, self.budget = model, table, metric, budget
        self.optimizer, self.engine = optimizer, engine
        self.by_params = metric is None
        self.settings = table.settings_dict
        self._plan_key = (model_fingerprint(model),
                          tuple(sorted((k, repr(v)) for k, v in self.settings.items())))
        self.x = example_input(model, batch_size=batch_size)
        self.base = 0 if metric is None else metric(table.none_peak_bytes,
                                                    table.none_frozen_weight_bytes)
        self.ks = (0, *table.bias_ks)
        self.layers = table.layers
        self.ratios = [(0.0, *sorted(c.ratio for c in table.weights if c.layer == layer))
                       for layer in self.layers]
        entries = [[None, *(table.bias(k) for k in table.bias_ks)]]
        entries += [[None, *(table.weight(layer, r) for r in rs[1:])]
                    for layer, rs in zip(self.layers, self.ratios, strict=True)]
        self.gains = [[0.0 if e is None else e.gain for e in group] for group in entries]
        self._reports: dict[Genome, MemoryReport] = {}
        if metric is None:  # each option's trained parameters, from its own plan
            self.costs = [[self.plan(self._single(g, i)).trainable_numel if i else 0
                           for i in range(len(group))] for g, group in enumerate(entries)]
        else:
            self.costs = [[0 if e is None else max(0, metric(e.peak_bytes,
                                                             e.frozen_weight_bytes) - self.base)
                           for e in group] for group in entries]

    def _single(self, group: int, option: int) -> Genome:
        return tuple(option if g == group else 0 for g in range(len(self.gains)))

    @property
    def empty(self) -> Genome:
        return (0,) * len(self.gains)

    @property
    def evaluated(self) -> int:
        """How many distinct schemes were estimated."""
        return len(self._reports)

    def scheme(self, genome: Genome) -> tuple[int, dict[str, float]]:
        weights = {layer: rs[i] for layer, rs, i in zip(self.layers, self.ratios, genome[1:],
                                                          strict=True) if i}
        return self.ks[genome[0]], weights

    def plan(self, genome: Genome) -> Any:
        biases, weights = self.scheme(genome)
        known = _PLANS.setdefault(self.model, {})
        key = (self._plan_key, biases, tuple(sorted(weights.items())))
        if key not in known:
            known[key] = option_plan(self.model, biases, weights, self.settings)
        return known[key]

    def gain(self, genome: Genome) -> float:
        return sum(g[i] for g, i in zip(self.gains, genome, strict=True))

    def guide(self, genome: Genome) -> int:
        return sum(c[i] for c, i in zip(self.costs, genome, strict=True))

    def report(self, genome: Genome) -> MemoryReport:
        if genome not in self._reports:
            plan = self.plan(genome)
            known = _ESTIMATES.setdefault(self.model, {})
            key = (plan, tuple(self.x.shape), self.optimizer, self.engine)
            if key not in known:
                known[key] = estimate(self.model, self.x, plan, optimizer=self.optimizer,
                                      engine=self.engine)
            self._reports[genome] = known[key]
        return self._reports[genome]

    def need(self, genome: Genome) -> int:
        """Bytes (``metric`` of the estimate) or, by parameters, the trained parameters."""
        if self.metric is None:
            return self.plan(genome).trainable_numel
        report = self.report(genome)
        return self.metric(int(report.peak_bytes), int(report.frozen_weight_bytes))

    def fits(self, genome: Genome) -> bool:
        return self.need(genome) <= self.budget

    def repair_chain(self, genome: Genome) -> list[Genome]:
        """``genome``, then each scheme left after dropping the chosen option of least gain
        per guide byte (free options last), down to the empty scheme."""
        chain = [genome]
        while any(genome):
            chosen = [g for g, i in enumerate(genome) if i]
            worst = min(chosen, key=lambda g: (self.costs[g][genome[g]] == 0,
                                               self.gains[g][genome[g]]
                                               / max(1, self.costs[g][genome[g]]), -g))
            genome = tuple(0 if g == worst else i for g, i in enumerate(genome))
            chain.append(genome)
        return chain


class Knapsack:
    """Group knapsack by dynamic programming: ``best[c]`` is the largest summed gain of one
    option per group with summed cost (in units of ``resolution_bytes``, each option's
    cost rounded up) at most c. Only a strictly larger gain replaces an option, so a
    chosen option always has a positive gain and ties keep the cheaper, earlier one."""

    def __init__(self, costs: list[list[int]], gains: list[list[float]],
                 resolution_bytes: int) -> None:
        self.resolution = resolution_bytes
        self.units = [[math.ceil(c / resolution_bytes) for c in group] for group in costs]
        self.total = sum(max(group) for group in self.units)
        best = np.zeros(self.total + 1)
        self.choice: list[np.ndarray] = []
        for units, values in zip(self.units, gains, strict=True):
            new, pick = best.copy(), np.zeros(self.total + 1, dtype=np.int32)
            for option, (w, v) in enumerate(zip(units, values, strict=True)):
                if option == 0:
                    continue
                cand = np.full(self.total + 1, -np.inf)
                cand[w:] = best[:self.total + 1 - w] + v
                better = cand > new + 1e-12
                new[better], pick[better] = cand[better], option
            best = new
            self.choice.append(pick)
        self.best = best

    def capacity(self, budget_bytes: int) -> int:
        """Whole units within ``budget_bytes`` (rounded down), capped at the total."""
        return max(0, min(self.total, budget_bytes // self.resolution))

    def solve(self, capacity_units: int) -> Genome:
        """The options the program chose at ``capacity_units``."""
        c = max(0, min(self.total, capacity_units))
        genome = []
        for units, pick in zip(reversed(self.units), reversed(self.choice), strict=True):
            option = int(pick[c])
            genome.append(option)
            c -= units[option]
        return tuple(reversed(genome))

    def frontier(self, limit_units: int) -> list[Genome]:
        """The solutions at every capacity up to ``limit_units`` where the best gain grows,
        largest gain first."""
        top = max(0, min(self.total, limit_units))
        steps = np.flatnonzero(np.diff(self.best[:top + 1]) > 1e-12) + 1
        caps = [0, *steps.tolist()]
        return [self.solve(c) for c in reversed(caps)]


def knapsack_search(space: Space, resolution_bytes: int) -> Genome:
    """The best scheme the knapsack finds whose need fits.

    Candidates: the program's solution at every capacity where its best gain grows, up
    to twice the budget's room above inference (the guide adds peaks up, so it can
    overstate a combined plan), each followed by its repair chain. The answer is the
    candidate of largest gain that fits; the candidates do not depend on the budget and
    grow with it, so a larger budget never gives a smaller gain. By parameters the costs
    are exact (one parameter a unit, ``resolution_bytes`` unused) and the room is the
    budget itself: the first candidate is the optimum and fits."""
    resolution = 1 if space.by_params else resolution_bytes
    program = Knapsack(space.costs, space.gains, resolution)
    room = max(0, space.budget - space.base)
    limit = room if space.by_params else 2 * room // resolution
    best: Genome = space.empty
    for candidate in program.frontier(limit):
        if space.gain(candidate) <= space.gain(best):
            break  # sorted by gain: nothing left can beat what fits
        for genome in space.repair_chain(candidate):
            if space.gain(genome) <= space.gain(best):
                break
            if space.fits(genome):
                best = genome
                break
    return best
