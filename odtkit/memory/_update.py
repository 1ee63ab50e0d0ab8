"""The optimizer step and the fp16 loss scaler, played in bytes as torch's own code runs them.

Each function appends ("phase: op", live bytes) points where a measured step reads its
live bytes (the end of every top-level aten op) and returns the live bytes after it.

- SGD (``torch.optim.SGD``, single-tensor path on the CPU): ``param.add_(grad)`` in place;
  with momentum, the first step's buffer is a clone of the gradient.
- Adam (single-tensor path): first a step count (a float32 scalar) and two zero tensors of
  each parameter's size, for every parameter; then per parameter in-place updates and the
  denominator ``(exp_avg_sq.sqrt() / c).add_(eps)``: two temporaries of the parameter's size
  at the division, one (the denominator) kept by the loop's variable until the next
  parameter's denominator replaces it.
- ``torch.amp.GradScaler``: the scale (float32) and growth tracker (int32) appear as the
  loss is scaled and persist (optimizer state); ``backward`` starts from the scaled loss,
  whose own backward hands the loss a fresh gradient; ``unscale_`` makes the inverse scale
  (through float64), a found-inf flag and the per-device copies of both, and keeps one
  flag through the optimizer step until ``update`` lets it go.

A Python number where an op takes a tensor (``step_t += 1``, ``x / c``) becomes a 0-dim
tensor (float64 or int64) that lives until the op returns: ``WRAPPED_NUMBER_BYTES``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..training.optim import state_copies

if TYPE_CHECKING:
    from ._trace import Trace

WRAPPED_NUMBER_BYTES = {bool: 1, int: 8, float: 8, complex: 16}
_NUMBER = WRAPPED_NUMBER_BYTES[float]
_ADAM_STEP_BYTES = 4  # Adam's step count: a float32 scalar tensor per parameter
SCALER_STATE_BYTES = 4 + 4  # GradScaler's scale (float32) and growth tracker (int32)
_FLAG = 4  # a float32 scalar: the found-inf flag, the inverse scale


def state_bytes(optimizer: str, param_bytes: Iterable[int]) -> int:
    """Bytes of the optimizer's state after one step over parameters of these sizes."""
    sizes = list(param_bytes)
    extra = _ADAM_STEP_BYTES if optimizer == "adam" else 0
    return sum(state_copies(optimizer) * n + extra for n in sizes)


def optimizer_step(live: int, timeline: list, optimizer: str, param_bytes: list[int],
                   on_state: Callable[[int], None]) -> int:
    """One step of ``optimizer`` over parameters of these sizes (in the optimizer's order),
    from ``live`` bytes; appends to ``timeline`` and returns the live bytes after it.
    ``on_state(n)`` is told of every n bytes of state made, before the point that shows them."""
    def point(op: str, nbytes: int) -> None:
        timeline.append((f"step: {op}", nbytes))

    if optimizer == "sgd":
        for _ in param_bytes:
            point("add_", live)
    elif optimizer == "sgd-m":
        for n in param_bytes:
            live += n  # the first step's momentum buffer: a clone of the gradient
            on_state(n)
            point("clone", live)
            point("add_", live)
    else:
        for n in param_bytes:
            for made in (_ADAM_STEP_BYTES, n, n):
                live += made
                on_state(made)
                point("state", live)
        denom = 0  # the last parameter's denominator: alive until the next one is assigned
        for n in param_bytes:
            for op, extra in (("add_", _NUMBER), ("lerp_", 0), ("mul_", _NUMBER),
                              ("addcmul_", 0), ("item", 0), ("sqrt", n),
                              ("div", 2 * n + _NUMBER), ("add_", n + _NUMBER)):
                point(op, live + denom + extra)
            denom = n
            point("addcdiv_", live + denom)
    return live


def scale_loss(live: int, timeline: list, loss_bytes: int,
               on_state: Callable[[int], None]) -> int:
    """``scaler.scale(loss)``: scale and growth tracker (state, told to ``on_state``),
    then the scaled loss."""
    for made in (_FLAG, SCALER_STATE_BYTES - _FLAG):
        live += made
        on_state(made)
        timeline.append(("backward: scale", live))
    live += loss_bytes
    timeline.append(("backward: scale", live))
    return live


def unscale(live: int, timeline: list) -> int:
    """``scaler.unscale_``: the inverse scale through float64, the found-inf flag and the
    per-device copies of both; returns the live bytes with one flag kept for the step."""
    double = WRAPPED_NUMBER_BYTES[float]
    for op, nbytes in (("to", double), ("reciprocal", 2 * double),
                       ("to", double + _FLAG), ("full", 2 * _FLAG), ("to", 3 * _FLAG),
                       ("to", 4 * _FLAG),
                       ("_amp_foreach_non_finite_check_and_unscale_", 4 * _FLAG)):
        timeline.append((f"step: {op}", live + nbytes))
    return live + _FLAG


def update_scale(live: int, timeline: list) -> int:
    """``scaler.update``: the scale is updated in place, the kept flag let go."""
    timeline.append(("step: _amp_update_scale_", live))
    return live - _FLAG


def play_optimizer(t: Trace, param_grad: dict[int, int], masked: set, optimizer: str,
                   scaler: bool, live: int, timeline: list,
                   on_state: Callable[[int], None]) -> tuple[int, int]:
    """The optimizer's step over the parameters of trace ``t`` that got a gradient (inside
    the loss scaler's unscale and update when ``scaler``); returns the live bytes after it
    and the bytes of the state it leaves. The optimizer goes through the parameters in
    the model's order, the channel-sparse ones (``masked``: make_optimizer's masks) in a
    group after the others."""
    if not param_grad:
        return live, 0
    order = [t.param_value[n] for n in t.param_names if t.param_value.get(n) in param_grad]
    groups = [[t.value_bytes[v] for v in order if (v in masked) == m] for m in (0, 1)]
    if scaler:
        live = unscale(live, timeline)
    for sizes in filter(None, groups):
        live = optimizer_step(live, timeline, optimizer, sizes, on_state)
    if scaler:
        live = update_scale(live, timeline)
    timeline.append(("step: done", live))
    return live, state_bytes(optimizer, groups[0] + groups[1]) + SCALER_STATE_BYTES * scaler
