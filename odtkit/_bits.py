"""The one bit packer of the package: the lean engine's ReLU masks and the compressors'
sign and level codes go through the same two functions.

Bit order (one, everywhere): codes of ``bits`` bits form one bit stream, each code
written most significant bit first, code after code; the stream fills bytes from their
most significant bit down, as ``numpy.packbits`` does (bitorder "big"). So for 1-bit
codes (masks) element 8*j + i is bit 7 - i of byte j, and for 4-bit codes byte j holds
code 2j in its high nibble and code 2j + 1 in its low one. The tail of the last byte is 0.

    pack_bits(codes, bits)      (n,) codes, each < 2**bits -> (ceil(n * bits / 8),) uint8
    unpack_bits(packed, bits, n)                            -> (n,) uint8 codes

A bool mask packs with no copy beyond one int64 temporary per eight elements, which is
what the memory model of the lean engine counts (ceil(n / 8) bytes kept per mask).
"""

from __future__ import annotations

import math
import sys

import torch

from ._checks import check_int

__all__ = ["pack_bits", "unpack_bits"]

# On little-endian int64 words of eight 0/1 bytes, multiplying by _SPREAD moves byte i to
# bit 63 - i with no carries (all partial products land on distinct bits); unpacking
# multiplies a byte by the same constant, which copies bit 7 - i into bit 8*i + 7.
_SPREAD = 0x8040201008040201 - (1 << 64)  # as a signed int64
_LOW_BITS = 0x0101010101010101
_BIT_VALUES = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_FAST = sys.byteorder == "little"


def pack_bits(codes: torch.Tensor, bits: int = 1) -> torch.Tensor:
    """Pack unsigned ``codes`` (any shape, read flat; each in [0, 2**bits)) into bytes.

    A bool tensor is a mask of 1-bit codes. (n,) -> (ceil(n * bits / 8),) uint8, in the
    bit order of the module docstring. A code out of range raises naming it.
    """
    bits = check_int("bits", bits, low=1, high=8)
    if codes.dtype == torch.bool and bits == 1:
        return _pack_mask(codes)
    flat = _checked_codes(codes, bits)
    if bits == 1:
        return _pack_mask(flat.bool())
    if bits == 8:
        return flat.clone()
    if 8 % bits == 0:  # whole codes per byte (2 or 4 bits): the first in the high bits
        per = 8 // bits
        pad = -flat.numel() % per
        padded = (torch.cat([flat, flat.new_zeros(pad)]) if pad else flat).view(-1, per)
        out = padded[:, 0] << (8 - bits)
        for j in range(1, per):
            out |= padded[:, j] << (8 - bits * (j + 1))
        return out
    shifts = torch.arange(bits - 1, -1, -1, device=flat.device, dtype=torch.uint8)
    planes = (flat.unsqueeze(1) >> shifts) & 1  # (n, bits), most significant bit first
    return _pack_mask(planes.bool())


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: (ceil(n * bits / 8),) uint8 -> (n,) uint8 codes."""
    bits = check_int("bits", bits, low=1, high=8)
    n = check_int("n", n, low=0)
    expected = math.ceil(n * bits / 8)
    if packed.dtype != torch.uint8 or packed.numel() != expected:
        raise ValueError(f"{n} codes of {bits} bits need {expected} uint8 bytes, got "
                         f"{packed.numel()} of {packed.dtype}")
    packed = packed.reshape(-1)
    if n == 0:
        return torch.zeros(0, dtype=torch.uint8, device=packed.device)
    if bits == 1:
        return _unpack_mask(packed, n)
    if bits == 8:
        return packed.clone()
    if 8 % bits == 0:
        per, mask = 8 // bits, (1 << bits) - 1
        parts = [(packed >> (8 - bits * (j + 1))) & mask for j in range(per)]
        return torch.stack(parts, dim=1).reshape(-1)[:n]
    planes = _unpack_mask(packed, n * bits).view(n, bits)
    shifts = torch.arange(bits - 1, -1, -1, device=packed.device, dtype=torch.uint8)
    return (planes << shifts).sum(1, dtype=torch.uint8)


def _checked_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``codes`` flat as uint8, after checking they are integers in [0, 2**bits)."""
    if codes.is_floating_point() or codes.is_complex():
        raise TypeError(f"pack_bits takes integer or bool codes, got dtype {codes.dtype}")
    flat = codes.reshape(-1)
    if flat.numel():
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= 2**bits:
            bad = low if low < 0 else high
            raise ValueError(f"code {bad} does not fit in bits={bits} (codes must be in "
                             f"[0, {2**bits - 1}]); pass more bits or smaller codes")
    return flat.to(torch.uint8)


def _pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> (ceil(numel/8),) uint8, element 8j + i in bit 7 - i of byte j."""
    if mask.numel() == 0:
        return torch.zeros(0, dtype=torch.uint8, device=mask.device)
    flat = mask.reshape(-1).view(torch.uint8)  # (n,) of 0/1, no copy if contiguous
    pad = (-flat.numel()) % 8
    if pad or flat.storage_offset() % 8:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    if _FAST:
        return ((flat.view(torch.int64) * _SPREAD) >> 56).to(torch.uint8)  # (ceil(n/8),)
    return (flat.view(-1, 8) * _BIT_VALUES.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def _unpack_mask(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``_pack_mask``: (n,) uint8 of 0/1 (a view into an 8-per-byte buffer)."""
    if _FAST:
        words = packed.to(torch.int64) * _SPREAD  # bit 8i+7 <- element i (other bits: junk)
        bytes_ = ((words >> 7) & _LOW_BITS).view(torch.uint8)  # (8 * len(packed),) of 0/1
    else:
        bytes_ = (packed.unsqueeze(1) & _BIT_VALUES.to(packed.device)).ne(0).view(-1)
        bytes_ = bytes_.to(torch.uint8)
    return bytes_[:n]
