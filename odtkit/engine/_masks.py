"""The lean engine's mask packer: the package's bit order (``odtkit._bits``, numpy.packbits
order), in as few dispatches as a CPU step allows.

Clamp masks (``pack_pass`` / ``apply_mask``) are the Python twins of the compiled ops'
(``csrc/lean_ops.cpp``): the mask is computed by numpy outside torch's allocator and
packed straight into a torch tensor, and backward multiplies the gradient by the unpacked
bits into a torch tensor, so torch's allocator sees the same tensors either way: the
packed bytes in forward, the input gradient in backward, nothing else.

A lean layer packs one mask per call in forward and unpacks it once in backward, so at
batch 1 the per-op cost is what shows up in step time. On the CPU, numpy's packbits and
unpackbits do each in one vectorized call on the tensor's own memory (``Tensor.numpy()``
shares it): packing writes into a tensor from torch's allocator (so the kept mask is seen
by memory measurements), unpacking returns a numpy-owned 0/1 array that lives only until
the gradient is multiplied by it (kernel scratch, outside torch's allocator, like the
scratch a convolution kernel allocates). Other devices use ``odtkit._bits``.

Transient bytes, for the memory rules (n elements, k = ceil(n/8) packed bytes): packing
holds the bool mask beside the packed bytes (n); unpacking nothing in torch's allocator.
"""

from __future__ import annotations

import numpy as np
import torch

from .._bits import pack_bits as pack_codes
from .._bits import unpack_bits as unpack_codes

CHUNK = 1 << 15  # most elements of the float temporary when a mask is built from a float test
SMALL = 1 << 13  # up to this many elements, in one piece


def chunk_of(n: int) -> int:
    """Elements per float chunk for an n-element mask: n when small, else at most half of n
    (never more than the 3n bytes of a two-comparison mask) and at most CHUNK."""
    return n if n <= SMALL else min(CHUNK, -(-n // 2))


def mask_from(nonzero, *flats: torch.Tensor) -> torch.Tensor:
    """(n,) bool mask, True where ``nonzero(*chunks)`` (a float tensor for the same flat
    elements of each of ``flats``, all (n,)) is nonzero, built ``chunk_of(n)`` elements at
    a time so the float temporary stays small. A float test and a cast to bool are
    vectorized on CPU; a comparison with a bool result is not (several times slower).
    Busiest moment: n + 4*chunk_of(n) bytes. Chunks are views from one ``split`` each."""
    n = flats[0].numel()
    step = chunk_of(n)
    if step == n:
        return nonzero(*flats).bool()
    mask = torch.empty(n, dtype=torch.bool, device=flats[0].device)
    for out, *chunks in zip(mask.split(step), *(f.split(step) for f in flats), strict=True):
        out.copy_(nonzero(*chunks))
    return mask


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor (any shape, read flat) -> (ceil(numel/8),) uint8 in numpy.packbits order."""
    if not mask.is_cpu:
        return pack_codes(mask.reshape(-1), 1)
    if not mask.is_contiguous():
        mask = mask.reshape(-1)
    out = torch.empty(-(-mask.numel() // 8), dtype=torch.uint8)
    out.numpy()[:] = np.packbits(mask.numpy())  # packbits reads a contiguous array flat
    return out


def _rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` as a tensor of ``dtype`` holds it (what a clamp to it writes), by numpy."""
    if dtype == torch.float64:
        return float(value)
    if dtype == torch.float16:
        return float(np.float16(value))
    bits = int(np.array(value, dtype=np.float32).view(np.uint32))
    if dtype == torch.bfloat16:  # round to nearest even on the upper 16 bits
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return float(np.array(bits, dtype=np.uint32).view(np.float32))


def _values(y: torch.Tensor) -> np.ndarray | None:
    """A numpy view (or, for bfloat16, a float32 copy outside torch) of contiguous CPU ``y``."""
    if y.dtype in (torch.float32, torch.float64, torch.float16):
        return y.numpy()
    if y.dtype == torch.bfloat16:
        return (y.view(torch.int16).numpy().astype(np.int32) << 16).view(np.float32)
    return None


def pack_pass(y: torch.Tensor, lo: float, hi: float | None) -> torch.Tensor | None:
    """(ceil(n/8),) uint8 bits of ``lo < y < hi`` (a NaN blocked, as in the vectorized body
    of torch's hardtanh_backward; its scalar tail passes one) or, without ``hi``, of
    ``not y <= lo`` (a NaN passes, as in threshold_backward), read flat in logical order;
    None where numpy cannot read ``y`` (other devices and dtypes). ``lo``/``hi`` are
    compared as ``y``'s dtype rounds them, since that is what the clamp wrote."""
    if not y.is_cpu or y.requires_grad:
        return None
    if not y.is_contiguous():
        y = y.contiguous()
    vals = _values(y)
    if vals is None:
        return None
    flat = vals.reshape(-1)
    if hi is None:
        passes = flat <= _rounded(lo, y.dtype)
        np.logical_not(passes, out=passes)
    else:
        passes = flat > _rounded(lo, y.dtype)
        passes &= flat < _rounded(hi, y.dtype)
    out = torch.empty(-(-y.numel() // 8), dtype=torch.uint8)
    out.numpy()[:] = np.packbits(passes)
    return out


def apply_mask(grad: torch.Tensor, packed: torch.Tensor, shape: torch.Size,
               n: int) -> torch.Tensor:
    """``grad`` times the 0/1 bits of ``packed`` (``shape``, n elements): numpy multiplies
    into a tensor from torch's allocator where it can read ``grad``; else torch does."""
    if (grad.is_cpu and not grad.requires_grad and packed.is_cpu
            and grad.dtype in (torch.float32, torch.float64, torch.float16)):
        out = torch.empty_like(grad)
        bits = np.unpackbits(packed.numpy(), count=n).reshape(shape)
        np.multiply(grad.numpy(), bits, out=out.numpy())
        return out
    return grad * unpack_mask(packed, shape, n)


def unpack_mask(packed: torch.Tensor, shape: torch.Size, n: int) -> torch.Tensor:
    """Inverse of ``pack_mask``: a uint8 0/1 tensor of ``shape`` (``n`` elements)."""
    if not packed.is_cpu:
        return unpack_codes(packed, 1, n).view(shape)
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=n).reshape(shape))
