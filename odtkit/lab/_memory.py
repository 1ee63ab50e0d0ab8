"""Lab 01's exercise check: the student's number against a real measurement."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import choice_error
from .checks import CheckResult


def conv_saved_bytes(batch_size: int, in_channels: int, out_channels: int, size: int,
                     kernel_size: int, engine: str = "pytorch") -> int:
    """Bytes autograd really keeps for one Conv2d with a frozen weight and a trainable bias.

    Measured with saved-tensor hooks (parameters excluded): stock PyTorch keeps the input
    whatever trains; the lean engine keeps nothing here.
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    conv.weight.requires_grad_(False)
    if engine == "lean":
        from ..engine import lean
        from ..plans import plan

        conv = lean(conv, plan(conv, "bias-only"))
    params = {p.untyped_storage()._cdata for p in conv.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            kept[storage._cdata] = storage.nbytes()
        return t

    x = torch.zeros(batch_size, in_channels, size, size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        conv(x)
    return sum(kept.values())


def check_conv_saved_bytes(answer: object, batch_size: int = 8, in_channels: int = 16,
                           out_channels: int = 32, size: int = 32, kernel_size: int = 3,
                           engine: str = "pytorch", quiet: bool = False) -> CheckResult:
    """Is ``answer`` the bytes a Conv2d (frozen weight, trainable bias) keeps for backward?

    The reference is measured, not computed from the formula the student is asked for; a
    wrong answer gets a hint naming the likely slip. Prints the verdict unless ``quiet``.
    """
    if engine not in ("pytorch", "lean"):  # odtkit.memory.ENGINES (which imports this module)
        raise choice_error("engine", engine, ("pytorch", "lean"))
    result = _verdict(answer, batch_size, in_channels, out_channels, size, kernel_size, engine)
    if not quiet:
        print(result)
    return result


def _verdict(answer: object, batch_size: int, in_channels: int, out_channels: int, size: int,
             kernel_size: int, engine: str) -> CheckResult:
    if answer is None or answer is ...:
        return CheckResult(None, "replace the placeholder with your number of bytes.")
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return CheckResult(False, f"give a number of bytes, got {answer!r}.")
    right = conv_saved_bytes(batch_size, in_channels, out_channels, size, kernel_size, engine)
    if answer == right:
        return CheckResult(True, f"{right:,} bytes are kept for backward.")
    input_values = batch_size * in_channels * size * size
    hints = {
        input_values: "that counts values; each float32 value takes 4 bytes.",
        batch_size * out_channels * size * size * 4:
            "that is the output; the backward of a convolution needs its input.",
        input_values * 4 + out_channels * in_channels * kernel_size**2 * 4:
            "the weight is a parameter: it lives anyway, so it is not activation memory.",
        input_values * 4 // batch_size: "that is one sample; the whole batch is kept.",
        input_values * 32: "that looks like bits; divide by 8.",
    }
    if engine == "pytorch":
        hints[0] = ("stock PyTorch keeps the input even though the weight is frozen: one "
                    "backward formula serves the input, weight and bias gradients.")
    else:
        hints[input_values * 4] = ("stock PyTorch would keep the input, but the lean engine "
                                   "needs it only for the weight gradient, and the weight is "
                                   "frozen.")
    default = "which tensor does the backward read to get the input and bias gradients?"
    hint = hints.get(answer, default) if float(answer).is_integer() else default
    return CheckResult(False, f"{answer!r} is not it: {hint}")
