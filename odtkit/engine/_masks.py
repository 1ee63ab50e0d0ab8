"""The lean engine's mask packer: the package's bit order (``odtkit._bits``, numpy.packbits
order), in as few tensor ops as a CPU step allows.

A lean layer packs one mask per call in forward and unpacks it once in backward, so at
batch 1 the Python and dispatch cost per call is what shows up in step time: packing is
three kernels (a multiply that gathers eight 0/1 bytes into one, an in-place shift, a
cast), unpacking two (an int cast of the packed bytes, a row lookup in a 256 x 8 table).
A length that is not a multiple of 8 is first copied zero-padded; a big-endian host or
another device goes through ``odtkit._bits``, which gives the same bytes.

Transient bytes, for the memory rules (n elements, k = ceil(n/8) packed bytes): packing
holds the bool mask and one int64 word per eight elements (n + n bytes, plus the padded
copy of n bytes when n is not a multiple of 8) as its busiest moment ends; unpacking holds the 8k-byte 0/1 mask once its int32 index is gone.
"""

from __future__ import annotations

import sys

import torch

from .._bits import pack_bits as pack_codes
from .._bits import unpack_bits as unpack_codes

# multiplying a little-endian int64 word of eight 0/1 bytes by this gathers byte i into
# bit 63 - i without carries (the root packer's constant, see odtkit._bits)
_SPREAD = torch.tensor(0x8040201008040201 - (1 << 64), dtype=torch.int64)
_FAST = sys.byteorder == "little"
# row b: the eight bits of byte b, most significant first (a packed byte -> 8 mask bytes)
_TABLE = torch.tensor([[(b >> (7 - i)) & 1 for i in range(8)] for b in range(256)],
                      dtype=torch.uint8)


CHUNK = 1 << 15  # most elements of the float temporary when a mask is built from a float test
SMALL = 1 << 13  # up to this many elements, in one piece


def chunk_of(n: int) -> int:
    """Elements per float chunk for an n-element mask: n when small, else at most half of n
    (never more than the 3n bytes of a two-comparison mask) and at most CHUNK."""
    return n if n <= SMALL else min(CHUNK, -(-n // 2))


def mask_from(n: int, device: torch.device, nonzero) -> torch.Tensor:
    """(n,) bool mask, True where ``nonzero(i, j)`` (a float tensor for flat elements i:j)
    is nonzero, built ``chunk_of(n)`` elements at a time so the float temporary stays
    small. A float test and a cast to bool are vectorized on CPU; a comparison with a bool
    result is not (several times slower). Busiest moment: n + 4*chunk_of(n) bytes."""
    step = chunk_of(n)
    if step == n:
        return nonzero(0, n).bool()
    mask = torch.empty(n, dtype=torch.bool, device=device)
    for i in range(0, n, step):
        mask[i:i + step].copy_(nonzero(i, min(i + step, n)))
    return mask


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor (any shape, read flat) -> (ceil(numel/8),) uint8 in numpy.packbits order."""
    flat = mask.reshape(-1)
    if not _FAST or flat.device.type != "cpu":
        return pack_codes(flat, 1)
    pad = -flat.numel() % 8
    if pad or flat.storage_offset() % 8:  # a copy, zero-padded to whole words
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.uint8).view(torch.int64)  # (n/8,) eight 0/1 bytes each
    prod = words * _SPREAD
    prod >>= 56
    return prod.to(torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: torch.Size, n: int) -> torch.Tensor:
    """Inverse of ``pack_mask``: a uint8 0/1 tensor of ``shape`` (``n`` elements)."""
    if packed.device.type != "cpu":
        return unpack_codes(packed, 1, n).view(shape)
    bits = _TABLE.index_select(0, packed.int())  # (k, 8)
    return bits.view(-1)[:n].view(shape)


