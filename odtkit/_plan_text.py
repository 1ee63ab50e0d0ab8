"""How a TrainPlan shows itself: the describe() table, the notebook HTML and repr.

One row per parameter (names carry their layer: ``features.0.weight``): shape, numel,
whether it trains ("yes", "no", or "part" for a channel-sparse one) and, where the plan
selects channels, which ones (axis, count of size, ratio, indices abbreviated).
"""

from __future__ import annotations

import html
import math
from typing import Any

from ._plan_channels import describe_entries, entries_of

TrainPlan = Any  # odtkit.plans.TrainPlan (not imported: plans imports this module)

Row = tuple[str, str, int, str, str]


def rows(plan: TrainPlan) -> list[Row]:
    """(name, shape, numel, trains, channels) for every parameter of the plan."""
    out = []
    for name, shape in zip(plan.names, plan.shapes, strict=True):
        entries = entries_of(plan.channels, name)
        trains = "part" if entries else "yes" if name in plan.trainable else "no"
        out.append((name, "(" + ", ".join(map(str, shape)) + ")", math.prod(shape), trains,
                    describe_entries(shape, entries)))
    return out


def header(plan: TrainPlan) -> str:
    rec = ", ".join(plan.recompute) if plan.recompute else "none"
    sparse = f", {len(plan.channels)} channel selections" if plan.channels else ""
    act = (f", activation gradients {plan.activation_grad}"
           if plan.activation_grad != "exact" else "")
    return (f"TrainPlan {plan.scheme!r}: precision {plan.precision}, norm statistics "
            f"{plan.norm_stats}, recompute {rec}{sparse}{act}")


def footer(plan: TrainPlan) -> str:
    return (f"trainable {plan.trainable_numel:,} of {plan.total_numel:,} parameters "
            f"({100 * plan.trainable_share:.1f}%) in {len(plan.trainable)} of "
            f"{len(plan.names)} tensors")


def describe(plan: TrainPlan) -> str:
    """The table: parameter, shape, numel, trains (and channels), with the totals."""
    table = rows(plan)
    head = ("parameter", "shape", "numel", "trains", "channels")
    w0 = max([len(head[0])] + [len(r[0]) for r in table])
    w1 = max([len(head[1])] + [len(r[1]) for r in table])
    w2 = max([len(head[2])] + [len(f"{r[2]:,}") for r in table])
    sparse = bool(plan.channels)
    w3 = max(len(head[3]), *(len(r[3]) for r in table)) if sparse and table else 0

    def line(a: str, b: str, c: str, d: str, e: str) -> str:
        text = f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}  "
        return (text + f"{d:<{w3}}  {e}").rstrip() if sparse else text + d

    lines = [header(plan), line(*head)]
    lines.append("-" * len(lines[-1]))
    lines += [line(n, s, f"{k:,}", t, c) for n, s, k, t, c in table]
    lines.append(footer(plan))
    return "\n".join(lines)


def to_html(plan: TrainPlan) -> str:
    esc = html.escape
    sparse = bool(plan.channels)
    extra = "<th>channels</th>" if sparse else ""
    body = "".join(
        f"<tr><td>{esc(n)}</td><td>{esc(s)}</td><td style='text-align:right'>{k:,}</td>"
        f"<td>{t}</td>{f'<td>{esc(c)}</td>' if sparse else ''}</tr>"
        for n, s, k, t, c in rows(plan))
    return (f"<p>{esc(header(plan))}</p><table><thead><tr><th>parameter</th>"
            f"<th>shape</th><th>numel</th><th>trains</th>{extra}</tr></thead><tbody>{body}"
            f"</tbody></table><p>{esc(footer(plan))}</p>")


def to_repr(plan: TrainPlan) -> str:
    sparse = f", channels={len(plan.channels)} selections" if plan.channels else ""
    return (f"TrainPlan(scheme={plan.scheme!r}, trainable={len(plan.trainable)}/"
            f"{len(plan.names)} tensors, {plan.trainable_numel:,}/{plan.total_numel:,} "
            f"parameters ({100 * plan.trainable_share:.1f}%), precision={plan.precision!r}, "
            f"norm_stats={plan.norm_stats!r}, recompute={plan.recompute!r}{sparse}"
            + (f", activation_grad={plan.activation_grad!r}" if plan.activation_grad != "exact"
               else "") + ")")
