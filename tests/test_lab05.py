"""Lab 05's exercise check: it accepts a right top-k with error feedback, explains wrong ones
and reports the notebook's placeholder as not done; the stored notebook is clean; the full
run's file (benchmarks/results/lab05.json) holds the lab's settings, its first epoch is what
simulate gives now, a stale number is named, and every result the prose cites is printed
in a compared output."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch

import odtkit as odt
from odtkit.lab import check_topk_ef, lab05

LAB = Path(__file__).resolve().parents[1] / "labs" / "05_gradient_compression.ipynb"


def right(grad, residual, density):
    p = grad + residual
    k = math.ceil(density * p.numel())
    keep = p.flatten().abs().topk(k).indices
    sent = torch.zeros_like(p).flatten()
    sent[keep] = p.flatten()[keep]
    sent = sent.view_as(p)
    return sent, p - sent


def ignores_residual(grad, residual, density):
    sent, _ = right(grad, torch.zeros_like(residual), density)
    return sent, grad + residual - sent


def signed(grad, residual, density):
    p = grad + residual
    keep = p.flatten().topk(math.ceil(density * p.numel())).indices
    sent = torch.zeros(p.numel())
    sent[keep] = p.flatten()[keep]
    return sent.view_as(p), p - sent.view_as(p)


def floor_k(grad, residual, density):
    p = grad + residual
    keep = p.flatten().abs().topk(int(density * p.numel())).indices
    sent = torch.zeros(p.numel())
    sent[keep] = p.flatten()[keep]
    return sent.view_as(p), p - sent.view_as(p)


def swapped(grad, residual, density):
    sent, new_residual = right(grad, residual, density)
    return new_residual, sent


def keeps_old_residual(grad, residual, density):
    sent, _ = right(grad, residual, density)
    return sent, residual


def test_right_answer_is_accepted(capsys):
    result = check_topk_ef(right)
    assert result.ok is True and "Correct" in capsys.readouterr().out
    assert check_topk_ef(right, density=0.2, steps=6, quiet=True).ok is True


@pytest.mark.parametrize(("fn", "explanation"), [
    (ignores_residual, "top-k of |grad + residual|"),
    (signed, "magnitudes (abs)"),
    (floor_k, "ceil(0.05 * 133) = 7"),
    (keeps_old_residual, "grad + residual - sent"),
    (swapped, "swapped: you returned (residual, sent)"),
    (lambda g, r, d: (g, r, d), "failed at step 0"),
    (lambda g, r, d: (g.flatten(), r), "shaped like grad (7, 19)"),
])
def test_wrong_answers_are_explained(fn, explanation, capsys):
    result = check_topk_ef(fn)  # never raises: the lab runs on
    assert result.ok is False and not result
    assert explanation in result.message
    assert explanation in capsys.readouterr().out


def test_placeholder_is_not_done_yet():
    def placeholder(grad, residual, density):
        raise NotImplementedError("your turn")

    for fn in (placeholder, None):
        result = check_topk_ef(fn, quiet=True)
        assert result.ok is None and str(result).startswith("Not done yet")


def _cells():
    return json.loads(LAB.read_text())["cells"]


def test_notebook_is_clean_and_small():
    nb = json.loads(LAB.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb["metadata"]
    assert LAB.stat().st_size < 1.5e6
    first = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    assert "torch.set_num_threads(1)" in first and "smoke()" in first


def test_notebook_exercise_solution_and_its_stub():
    """The master notebook stores the solution between markers and its "Correct"; the same
    cell with the solution replaced by the student's stub is reported as not done."""
    cell = next(c for c in _cells() if "def topk_ef_step" in "".join(c["source"]))
    source = "".join(cell["source"])
    stored = "".join("".join(o.get("text", "")) for o in cell["outputs"])
    assert stored.startswith("Correct")
    begin, end = source.index("    # BEGIN SOLUTION\n"), source.index("    # END SOLUTION\n")
    stub = (source[:begin] + '    raise NotImplementedError("your turn")\n'
            + source[end + len("    # END SOLUTION\n"):])
    for code, want in ((source, "Correct"), (stub, "Not done yet")):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, {"odt": odt, "torch": torch})  # noqa: S102 - the lab's own cell
        assert out.getvalue().startswith(want)


def test_notebook_shows_wire_bytes_beside_payload_bytes():
    """The stored outputs put what travels next to the payload: top-k's 327 payload bytes
    are 428 on the wire (8-byte length, 9-byte head, 14 bytes per tensor for six tensors)
    and 3 x 428 received; dense fp32's ring all-reduce moves 1.5 x 203,304 bytes each way."""
    text = "".join("".join(o.get("text", "")) for c in _cells() if c["cell_type"] == "code"
                   for o in c["outputs"])
    assert "top-k 0.1% + EF payload 327 B, wire sent 428 B, received 1,284 B" in text
    assert f"on the wire (allreduce): {3 * 203_304 // 2:,} B sent, {3 * 203_304 // 2:,} B" in text


# ------------------------------------------------------------------ the full run's file

def _compared_text() -> str:
    """Stored text of every code cell whose output nbval compares."""
    return "".join("".join(o.get("text", "")) for c in _cells() if c["cell_type"] == "code"
                   and "NBVAL_IGNORE_OUTPUT" not in "".join(c["source"]) for o in c["outputs"])


def test_results_file_holds_the_settings_of_the_lab():
    """benchmarks/results/lab05.json was made with the settings the notebook now uses: a
    changed suite, ablation, rank list or fleet makes it stale (rerun benchmarks/lab05.py)."""
    full = lab05.load_lab05_results()
    roundtrip = json.loads(json.dumps({
        "suite": odt.lab.SUITE, "dgc_ablation": lab05.DGC_ABLATION, "fleet": lab05.FLEET,
        "fleet_runs": lab05.FLEET_RUNS, "powersgd_ranks": list(lab05.POWERSGD_RANKS)}))
    for key, value in roundtrip.items():
        assert full["config"][key] == value, key
    assert (full["config"]["epochs"], full["config"]["workers"], full["config"]["seeds"]) == (
        lab05.LAB05_EPOCHS, lab05.LAB05_WORKERS, list(lab05.LAB05_SEEDS))
    assert list(full["suite"]) == list(odt.lab.SUITE)
    assert all(len(row["curve_seed0"]) == lab05.LAB05_EPOCHS for row in full["suite"].values())
    assert all(len(row["test_acc"]) == lab05.FLEET["rounds"] for row in full["federated"].values())


def test_first_epoch_of_top_k_equals_the_file():
    """One run of the lab, made here with simulate itself (not with the lab's helpers): its
    first epoch's bytes per round and test accuracy are the file's."""
    torch.set_num_threads(1)
    task = odt.datasets.load("digits")
    steps = lab05.steps_per_epoch(task)
    hist = odt.distributed.simulate(
        odt.lab.lab_model(task, seed=0), task, workers=4, batch_size=16, epochs=30, seed=0,
        max_steps=steps, **odt.lab.SUITE["top-k 0.1% + EF"])
    stored = lab05.load_lab05_results()["suite"]["top-k 0.1% + EF"]["first_epoch"]
    assert steps == 1258 // 64 == len(stored["payload_bytes"])
    assert hist.up_bytes_per_round == stored["payload_bytes"] == [327] * steps
    assert hist.wire_sent_bytes_per_round == stored["wire_sent_bytes"]
    assert hist.wire_recv_bytes_per_round == stored["wire_recv_bytes"] == [3 * 428] * steps
    assert abs(hist.test_acc[0] - stored["test_acc"]) <= 2 / 539


def test_differences_name_every_stale_number():
    full = lab05.load_lab05_results()
    live = {"suite": {"fp16": copy.deepcopy(full["suite"]["fp16"])},
            "federated": {"deadline 1 s": {
                "partial": True, **{k: full["federated"]["deadline 1 s"][k][:2]
                                    for k in ("test_acc", "up_bytes_per_round", "dropped")}}}}
    assert lab05.lab05_differences(live, full) == []  # a cut run: the file's first rounds
    live["suite"]["fp16"]["first_epoch"]["payload_bytes"][3] += 1
    live["suite"]["fp16"]["first_epoch"]["test_acc"] += 1 / 539  # one sample: tolerated
    live["suite"]["fp16"]["wall_s"] = -1.0  # wall-clock: never compared
    live["federated"]["deadline 1 s"]["up_bytes_per_round"][1] = 0
    live["suite"]["fp16"]["exchange"] = "allgather"
    live["suite"]["fp16"]["new"] = 1
    found = lab05.lab05_differences(live, full)
    assert found == ["/suite/fp16/first_epoch/payload_bytes[3]: run 101653.0, file 101652.0",
                     "/suite/fp16/exchange: run 'allgather', file 'allreduce'",
                     "/suite/fp16/new: not in the file",
                     f"/federated/deadline 1 s/up_bytes_per_round[1]: run 0, file "
                     f"{full['federated']['deadline 1 s']['up_bytes_per_round'][1]}"]
    live = {"suite": {"fp16": {"first_epoch": {"test_acc": 0.5}}}}
    assert lab05.lab05_differences(live, full)[0].startswith("/suite/fp16/first_epoch/test_acc")
    whole = {"federated": {"deadline 1 s": {"test_acc": [0.5]}}}  # not partial: full length
    assert lab05.lab05_differences(whole, full) == [
        "/federated/deadline 1 s/test_acc: 1 entries, the file 40"]


def test_every_result_the_prose_cites_is_in_a_compared_output():
    """Each accuracy (94.6%), ratio (621.7x) and gap in points that a markdown cell cites is
    printed by a cell whose output nbval compares."""
    prose = " ".join("".join(c["source"]) for c in _cells() if c["cell_type"] == "markdown")
    shown = _compared_text()
    cited = set(re.findall(r"\b\d+\.\d+(?=%|x\b| points)", prose))
    cited |= set(re.findall(r"\b\d{1,3}(?:,\d{3})+(?= bytes)", prose))
    assert {"94.6", "96.7", "88.1", "92.6", "621.7", "1.2", "81.6", "91.1"} <= cited
    paper = {"6.25", "99.9"}  # DGC's warm-up schedule and the sparsity it was made for
    missing = sorted(n for n in cited - paper if n not in shown)
    assert not missing, missing


def test_the_stored_run_is_the_short_ci_run_and_says_so():
    """The stored live check names what it re-ran; the notebook loads the file, not runs in
    the stored outputs' place."""
    shown = _compared_text()
    assert "simulated runs (their first epoch)" in shown
    assert "equals benchmarks/results/lab05.json" in shown
    assert "dense test accuracy after epoch 1: 67.7% here, 67.7% in the full run" in shown
