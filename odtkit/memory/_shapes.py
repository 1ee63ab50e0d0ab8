"""Output shapes of common aten ops, computed directly (meta kernels of many ops are slow),
and the dtype checks that meta kernels skip.

Each rule returns the op's output as fresh meta tensors; an op without a rule here is run
through its real meta kernel instead, which gives the same answer more slowly.
"""

from __future__ import annotations

import torch

META = torch.device("meta")

# ops whose output has the shape and dtype of their first argument
_SAME_AS_FIRST = frozenset({
    "relu", "hardtanh", "sigmoid", "tanh", "silu", "gelu", "hardswish", "hardsigmoid",
    "leaky_relu", "elu", "clone", "_softmax", "_log_softmax", "empty_like", "zeros_like",
    "ones_like", "rand_like", "randn_like", "bernoulli", "neg", "sqrt", "rsqrt", "exp", "abs",
})
# in-place ops that change a tensor's shape or strides, not its data
RESTRIDE = frozenset({"transpose_", "t_", "squeeze_", "unsqueeze_", "as_strided_",
                       "swapaxes_", "swapdims_", "resize_", "resize_as_", "set_"})
_BINARY = frozenset({"add", "sub", "mul", "div", "remainder", "maximum", "minimum"})


class DtypeMismatch(ValueError):
    """An op gets tensors of dtypes PyTorch refuses to mix: a real step would fail there,
    though the shape-only trace would not (meta kernels do not check dtypes)."""


# ops whose tensor arguments PyTorch requires to share one dtype (no type promotion);
# the norms also take an fp16 or bf16 input with fp32 parameters ("mixed type" on CPU)
_SAME_DTYPE = frozenset({"convolution", "addmm", "mm", "bmm"})
_NORMS = frozenset({"native_batch_norm", "_native_batch_norm_legit",
                    "_native_batch_norm_legit_no_training", "native_layer_norm",
                    "native_group_norm"})


def mixed_dtypes(name: str, args: tuple) -> list[str]:
    """The dtypes of an op's tensor arguments if PyTorch refuses to mix them, else []."""
    if name not in _SAME_DTYPE and name not in _NORMS:
        return []
    dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor)}
    first = next((a.dtype for a in args if isinstance(a, torch.Tensor)), None)
    if len(dtypes) < 2 or (name in _NORMS and first in (torch.float16, torch.bfloat16)
                           and dtypes == {first, torch.float32}):
        return []
    return sorted(map(str, dtypes))


def _empty(shape: tuple[int, ...] | list[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=META)


def _binary(args: tuple) -> torch.Tensor | None:
    a, b = args[0], args[1]
    if not isinstance(a, torch.Tensor):
        return None
    if isinstance(b, torch.Tensor):
        shape = torch.broadcast_shapes(a.shape, b.shape) if a.shape != b.shape else a.shape
        dtype = a.dtype if a.dtype == b.dtype else torch.result_type(a, b)
        return _empty(shape, dtype)
    if a.is_floating_point() or isinstance(b, int):
        return _empty(a.shape, a.dtype)
    return None  # int tensor with a float scalar: let the kernel promote


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _convolution(args: tuple) -> torch.Tensor | None:
    x, w, _b, stride, padding, dilation, transposed = args[:7]
    if transposed or isinstance(padding, str) or x.dim() != w.dim():
        return None
    if x.shape[1] != w.shape[1] * args[8]:
        raise RuntimeError(f"convolution expected input with {w.shape[1] * args[8]} channels "
                           f"(weight {tuple(w.shape)}, groups {args[8]}), but got input of "
                           f"shape {tuple(x.shape)}")
    spatial = [_conv_out(x.shape[2 + i], w.shape[2 + i], stride[i], padding[i], dilation[i])
               for i in range(w.dim() - 2)]
    return _empty((x.shape[0], w.shape[0], *spatial), x.dtype)


def _mean(args: tuple, kwargs: dict) -> torch.Tensor | None:
    x = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if dims is None or "dtype" in kwargs:
        return None
    dims = {d % x.dim() for d in dims}
    shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keep or i not in dims]
    return _empty(shape, x.dtype)


_RNN_WORKSPACE: dict[tuple, int] = {}


def _rnn_workspace_bytes(args: tuple) -> int:
    """Bytes of the workspace oneDNN's LSTM layer keeps for backward. Its layout (padded
    leading dimensions, page-aligned parts) is the library's own, and the meta kernel
    answers 0: the kernel is asked once per shape, on zeros, and the answer cached."""
    key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else
                (tuple(a) if isinstance(a, list) else a) for a in args)
    hit = _RNN_WORKSPACE.get(key)
    if hit is None:
        real = [torch.zeros(a.shape, dtype=a.dtype) if isinstance(a, torch.Tensor) else a
                for a in args]
        with torch.enable_grad():  # without grad mode the kernel makes no workspace
            workspace = torch.ops.aten.mkldnn_rnn_layer(*real)[3]
        hit = _RNN_WORKSPACE[key] = workspace.numel() * workspace.element_size()
    return hit


def _rnn_layer(args: tuple) -> tuple:
    """mkldnn_rnn_layer(input (T, N, I), w_ih, w_hh, b_ih, b_hh, hx, cx, reverse,
    batch_sizes, mode, hidden_size, ...) -> (output (T, N, H), hy, cy, workspace)."""
    x, hx, cx, hidden = args[0], args[5], args[6], args[10]
    return (_empty((*x.shape[:-1], hidden), x.dtype), _empty(hx.shape, hx.dtype),
            _empty(cx.shape, cx.dtype), _empty((_rnn_workspace_bytes(args),), torch.uint8))


def fast_output(name: str, args: tuple, kwargs: dict) -> object:
    """The op's meta output(s) for a known op, else None (run the real meta kernel)."""
    if name in RESTRIDE:
        return None  # in place, but on the view itself: the meta kernel restrides it
    if name.endswith("_") and args and isinstance(args[0], torch.Tensor):
        return args[0]  # in place: the output is the first argument itself
    if name in _SAME_AS_FIRST:
        if kwargs.get("dtype") is not None or kwargs.get("memory_format") not in (
                None, torch.preserve_format, torch.contiguous_format):
            return None
        return _empty(args[0].shape, args[0].dtype)
    if name in _BINARY:
        return _binary(args)
    if name == "convolution":
        return _convolution(args)
    if name == "native_batch_norm":
        x, training = args[0], args[5]
        channels = next((a.shape[0] for a in args[1:5] if isinstance(a, torch.Tensor)), None)
        if x.dim() < 2 or (channels is not None and x.shape[1] != channels):
            raise RuntimeError(f"batch norm over {channels} channels got input of shape "
                               f"{tuple(x.shape)}")
        # the CPU kernel returns empty save_mean / save_invstd in eval mode
        stat = (x.shape[1],) if training else (0,)
        return _empty(x.shape, x.dtype), _empty(stat, torch.float32), _empty(stat, torch.float32)
    if name in ("addmm", "mm"):
        m1, m2 = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
        if m1.shape[1] != m2.shape[0]:
            raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied "
                               f"({m1.shape[0]}x{m1.shape[1]} and {m2.shape[0]}x{m2.shape[1]})")
        return _empty((m1.shape[0], m2.shape[1]), m1.dtype)
    if name == "mean":
        return _mean(args, kwargs)
    if name == "mkldnn_rnn_layer" and not kwargs:
        return _rnn_layer(args)
    if name == "nll_loss_forward":
        x, reduction = args[0], args[3]
        if reduction == 0:
            return None
        return _empty((), x.dtype), _empty((), x.dtype)
    if name == "empty" and not kwargs.get("memory_format"):
        return _empty(args[0], kwargs.get("dtype") or torch.get_default_dtype())
    return None
