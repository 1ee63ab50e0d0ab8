"""Lab 05's exercise check: it accepts a right top-k with error feedback, explains wrong ones
and reports the notebook's placeholder as not done; the stored notebook is clean."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

import odtkit as odt
from odtkit.lab import check_topk_ef

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
