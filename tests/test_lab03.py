"""Lab 03's helpers: the exercise check (a hand-designed sparse scheme under a budget) and
the Pareto table and figure of the sparse-update benchmark's results."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import odtkit as odt  # noqa: E402

BUDGET = 393_216  # 384 KiB: last:1 .. last:7 fit, last:9 does not


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return odt.models.create("mcunet-tiny", pretrained=True)


@pytest.fixture(scope="module")
def task():
    return odt.datasets.load("digits-shift")


def check(answer, model, task, **kw):
    return odt.lab.check_sparse_scheme(answer, BUDGET, model, task, quiet=True, **kw)


def test_placeholder_is_not_done(model, task):
    result = check(None, model, task)
    assert result.ok is None and not result and "write your scheme" in result.message


def test_over_budget_names_the_excess_and_the_largest_parts(model, task):
    heavy = {"biases": 25, "weights": {f"blocks.{b}.block.{i}.0": 1.0
                                       for b in (6, 7) for i in (0, 2)}}
    result = check(heavy, model, task)
    assert result.ok is False
    assert "over the budget 384 KiB (393,216 B)" in result.message
    assert "blocks.6.block.2.0.weight (8,000 entries)" in result.message


def test_unknown_layer_is_named_with_suggestions(model, task):
    result = check({"weights": {"blocks.9.block.0.0": 0.5}}, model, task)
    assert result.ok is False
    assert "unknown layer 'blocks.9.block.0.0'" in result.message
    assert "Did you mean 'blocks.7.block.0.0'" in result.message


@pytest.mark.parametrize("answer, words", [
    ({"weights": {"classifier": 2}}, "a channel ratio is a fraction in (0, 1]"),
    ({"bias": 3}, "unknown key(s) ['bias']"),
    ({"biases": 30}, "has 25 layers with a bias"),
    ({"weights": {"blocks.7.block.0": 0.5}}, "unknown layer 'blocks.7.block.0'"),
    ({}, "trains nothing"),
    ("last:7", "give a scheme dict"),
])
def test_invalid_schemes_are_explained(model, task, answer, words):
    result = check(answer, model, task)
    assert result.ok is False and words in result.message, result.message


def test_a_plan_of_another_model_is_refused(model, task):
    other = odt.models.create("mbv2-tiny", num_classes=10)
    result = check(odt.plan(other, "bias-only"), model, task)
    assert result.ok is False and "another model" in result.message


def test_a_plan_no_better_than_last_k_fails(model, task):
    result = check(odt.plan(model, "last:7"), model, task, epochs=1, last_ks=(7,))
    assert result.ok is False
    assert "no better than last:7" in result.message


def test_a_good_scheme_passes_and_gives_both_accuracies(model, task):
    table = odt.sparse.contributions(model, task)  # the cached table
    found = odt.sparse.search(model, table=table, budget_bytes=BUDGET)
    start = {n: p.detach().clone() for n, p in model.state_dict().items()}
    result = check(found.plan, model, task, epochs=1, last_ks=(5, 7))
    assert result.ok is True, result.message
    assert "the best last:K that fits, last:" in result.message and "points" in result.message
    assert all(torch.equal(start[n], p) for n, p in model.state_dict().items())  # untouched


RESULTS = {
    "model": "m", "task": "t", "epochs": 2,
    "plans": {
        "full": {"memory": {"lean": {"estimated_bytes": 700, "measured_bytes": 700}},
                 "mean": 0.6, "std": 0.01, "test_acc": [0.59, 0.6, 0.61]},
        "last:1": {"memory": {"lean": {"estimated_bytes": 250, "measured_bytes": 250}},
                   "mean": 0.55, "std": 0.0, "test_acc": [0.55] * 3},
        "last:3": {"memory": {"lean": {"estimated_bytes": 310, "measured_bytes": 310}},
                   "mean": 0.54, "std": 0.0, "test_acc": [0.54] * 3},
        "searched @ 0.2": {"memory": {"lean": {"estimated_bytes": 330, "measured_bytes": 330}},
                           "mean": 0.65, "std": 0.02, "test_acc": [0.63, 0.65, 0.67],
                           "budget_bytes": 346},
    },
}


def test_pareto_table_marks_the_front_and_sorts_by_memory():
    text = odt.lab.format_pareto_table(RESULTS)
    lines = text.splitlines()
    assert [ln.split()[0] for ln in lines[2:]] == ["last:1", "last:3", "searched", "full"]
    assert lines[2].endswith("*") and lines[4].endswith("*")
    assert not lines[3].endswith("*") and not lines[5].endswith("*")  # beaten by smaller plans
    assert "65.0 ± 2.0%" in lines[4]


def test_pareto_figure_draws_one_series_per_scheme():
    fig = odt.lab.pareto_figure(RESULTS)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["last:K", "searched", "full"]
    plt.close(fig)


def test_committed_results_hold_both_targets():
    results = odt.lab.load_sparse_results()
    assert set(results["targets"]) == {"searched_within_budget_and_at_least_best_last_k",
                                       "explorer_median_at_most_100_ms"}
    rows = {r["plan"]: r for r in odt.lab.pareto_rows(results)}
    for check_ in results["budget_checks"]:
        assert rows[check_["budget"]]["measured_bytes"] == check_["searched_measured_bytes"]
