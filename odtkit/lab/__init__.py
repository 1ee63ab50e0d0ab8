"""What only the lab book needs: exercise checks, the suites the labs run, smoke mode.

A check never raises on a wrong or missing answer: it returns a `CheckResult`
(truthy only when right) and prints a message, so a notebook with the exercise
still open runs from top to bottom. Library code never imports this package.
"""

from __future__ import annotations

import os

from ._capstone import FLEET, LINK_BY_KIND, Capstone, ReportCard, round_time_figure
from ._memory import conv_saved_bytes
from ._precision import PrecisionRow, format_precision_table, precision_row, step_memory
from ._selection import (
    SELECTION_LR,
    budget_accuracy_figure,
    format_selection_table,
    load_selection_results,
    selection_model,
    selection_sweep,
    velocity_figure,
)
from ._sparse import (
    LAB_LAST_KS,
    contribution_figure,
    format_pareto_table,
    load_sparse_results,
    pareto_figure,
    pareto_rows,
)
from .checks import (
    NEQ_MU,
    NEQ_OUTPUTS,
    QUANTIZE_CASES,
    CheckResult,
    check_channel_sparse_count,
    check_conv_saved_bytes,
    check_neq,
    check_qparams,
    check_quantize,
    check_relu_saved_bytes,
    check_round_bytes,
    check_round_time,
    check_sparse_scheme,
    check_topk_ef,
    check_topk_payload_bytes,
    check_training_state_bytes,
    check_velocity_step,
    read_number,
)
from .suites import LAB_TASK, LAB_WIDTH, SUITE, lab_model

__all__ = [
    "CheckResult", "check_training_state_bytes", "check_conv_saved_bytes", "check_topk_ef",
    "check_quantize", "QUANTIZE_CASES", "conv_saved_bytes", "LAB_TASK", "LAB_WIDTH", "SUITE",
    "lab_model", "smoke", "PrecisionRow", "precision_row", "format_precision_table", "step_memory",
    "NEQ_OUTPUTS", "NEQ_MU", "check_neq", "SELECTION_LR", "selection_model", "selection_sweep",
    "load_selection_results",
    "format_selection_table", "budget_accuracy_figure", "velocity_figure",
    "check_sparse_scheme", "LAB_LAST_KS", "load_sparse_results", "pareto_rows",
    "format_pareto_table", "pareto_figure", "contribution_figure", "read_number",
    "check_relu_saved_bytes", "check_qparams", "check_channel_sparse_count",
    "check_velocity_step", "check_topk_payload_bytes",
    "Capstone", "ReportCard", "FLEET", "LINK_BY_KIND", "round_time_figure",
    "check_round_bytes", "check_round_time",
]


def smoke() -> bool:
    """True under CI or ODTKIT_SMOKE=1: notebooks and scripts shrink their work."""
    flag = os.environ.get("ODTKIT_SMOKE", "")
    if flag:
        return flag.lower() not in ("0", "false", "no")
    return bool(os.environ.get("CI"))
