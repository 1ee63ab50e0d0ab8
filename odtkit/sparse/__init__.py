"""Sparse updates: which channels and neurons train under a memory budget.

    idx = odt.sparse.select_channels(model, "features.3", 0.25, "magnitude-largest")
    sel = odt.sparse.select(model, {"features.3": 0.25, "fc": 0.5}, "random", seed=0)
    vel = odt.sparse.Velocity(model, x_val)   # NEq: vel.update() after each epoch
    sel = vel.select(0.151)                   # neurons within 15.1% of the parameters
    n = odt.sparse.budget_params(model, 0.151)
    plan = odt.sparse.plan(model, biases=2, weights={"features.3": 0.25})   # a TrainPlan
    plan = odt.plan(model, list(sel), channels=sel)   # a neuron selection as a TrainPlan
    table = odt.sparse.contributions(model, task)      # gains of short fine-tuning runs
    res = odt.sparse.search(model, table=table, budget_bytes=300_000)   # res.plan, res.report
    run = odt.sparse.train_selected(model, task, 0.151, "velocity", epochs=10)
"""

from __future__ import annotations

from .._lazy import export_lookup

# public name -> module of this package that defines it (loaded on first use)
_EXPORTS = {
    "CRITERIA": "criteria", "select_channels": "criteria", "select": "criteria",
    "channel_count": "criteria",
    "Velocity": "velocity", "neuron_delta": "velocity",
    "BUDGET_SHARES": "budget", "budget_params": "budget", "check_share": "budget",
    "selected_params": "budget", "total_params": "budget",
    "plan": "scheme",
    "contributions": "_contrib_analysis", "ContributionTable": "_contrib_analysis",
    "Contribution": "_contrib_analysis", "TableMismatchError": "_contrib_analysis",
    "model_fingerprint": "_contrib_analysis", "cached_path": "_contrib_analysis",
    "search": "_search_api", "SearchResult": "_search_api",
    "SELECTION_METHODS": "selection", "SelectionResult": "selection",
    "select_neurons": "selection", "train_selected": "selection",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = export_lookup(__name__, _EXPORTS)
