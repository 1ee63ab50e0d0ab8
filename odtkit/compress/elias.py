"""Elias omega (recursive Elias) coding, and QSGD's sparse code built from it.

Elias omega code of an integer N >= 1 (Elias 1975): start from "0"; while N > 1, put
N's binary form in front and continue with N := (its bit count - 1). So 1 -> 0,
2 -> 100, 3 -> 110, 4 -> 101000, 17 -> 10100100010. Its length is
log N + log log N + ... + 1 bits, which QSGD's bit bound rests on.

QSGD's code (Alistarh et al., NeurIPS 2017, section 3.1, "Efficient Coding of
Gradients"): after the norm, for each nonzero level in order, Elias(distance to it from
the previous nonzero; the first one's 1-based position), one sign bit (1: negative) and
Elias(level). Here the stream starts with Elias(count of nonzeros + 1), so that a
receiver of whole bytes knows where the bits end; bits fill bytes as ``pack_bits``.

Encoding is vectorized (O(bits) tensor work); decoding walks the stream in Python
(O(bits), a reference decoder: a few seconds per million entries).
"""

from __future__ import annotations

import torch

from .wire import pack_bits, unpack_bits

__all__ = ["omega_decode", "omega_encode", "omega_lengths", "sparse_decode", "sparse_encode"]


def _groups(values: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The binary groups of each value's omega code, last written first: [(value, bits)]
    per recursion step (bits 0 where the recursion already stopped)."""
    groups = []
    cur = values.to(torch.int64)
    while True:
        active = cur > 1
        if not bool(active.any()):
            break
        width = torch.frexp(cur.double()).exponent.to(torch.int64)  # bit length of cur
        width = torch.where(active, width, 0)
        groups.append((torch.where(active, cur, 0), width))
        cur = torch.where(active, width - 1, 1)
    return groups[::-1]  # the smallest group is written first


def omega_lengths(values: torch.Tensor) -> torch.Tensor:
    """Bits of each value's omega code (int64), e.g. 1 -> 1, 2 -> 3, 4 -> 6."""
    total = torch.ones_like(values, dtype=torch.int64)
    for _, width in _groups(values):
        total += width
    return total


def _fields(values: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(value, bits) fields of each omega code in writing order, the final 0 included."""
    zero = torch.zeros_like(values, dtype=torch.int64)
    return [*_groups(values), (zero, zero + 1)]


def _write(fields: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Bit stream (uint8 0/1) of per-item fields: item after item, field after field,
    each value most significant bit first in its width."""
    value = torch.stack([f[0] for f in fields], dim=1).reshape(-1)  # (items * fields,)
    width = torch.stack([f[1] for f in fields], dim=1).reshape(-1)
    keep = width > 0
    value, width = value[keep], width[keep]
    total = int(width.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.uint8)
    start = torch.cumsum(width, 0) - width  # first bit of each field
    owner = torch.repeat_interleave(torch.arange(width.numel()), width)  # field of each bit
    within = torch.arange(total) - start[owner]
    shift = width[owner] - 1 - within
    return ((value[owner] >> shift) & 1).to(torch.uint8)


def omega_encode(values: torch.Tensor) -> torch.Tensor:
    """Omega codes of ``values`` (integers >= 1) one after another, packed into bytes."""
    values = values.reshape(-1).to(torch.int64)
    if values.numel() and int(values.min()) < 1:
        raise ValueError(f"Elias omega codes integers >= 1, got {int(values.min())}")
    return pack_bits(_write(_fields(values)), 1)


def _read(bits: str, pos: int) -> tuple[int, int]:
    """One omega code from the '0'/'1' string at ``pos``: (value, position after it)."""
    n = 1
    while bits[pos] == "1":
        n, pos = int(bits[pos : pos + n + 1], 2), pos + n + 1
    return n, pos + 1


def _bit_string(packed: torch.Tensor) -> str:
    flat = unpack_bits(packed, 1, 8 * packed.numel())
    return flat.numpy().tobytes().translate(bytes.maketrans(b"\x00\x01", b"01")).decode()


def omega_decode(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` omega-coded integers of a packed stream (int64)."""
    bits, pos, out = _bit_string(packed), 0, []
    for _ in range(count):
        value, pos = _read(bits, pos)
        out.append(value)
    return torch.tensor(out, dtype=torch.int64)


def sparse_encode(level: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """QSGD's code of integer levels (n,) >= 0 with sign flags (n,) bool, packed bytes:
    Elias(m + 1), then per nonzero Elias(gap), its sign bit, Elias(level)."""
    level = level.reshape(-1).to(torch.int64)
    index = level.nonzero().reshape(-1)  # (m,)
    gap = torch.diff(index, prepend=torch.tensor([-1]))  # >= 1: the first is position + 1
    sign = negative.reshape(-1)[index].to(torch.int64)
    head = _write(_fields(torch.tensor([index.numel() + 1])))
    body = _write([*_fields(gap), (sign, torch.ones_like(sign)), *_fields(level[index])])
    return pack_bits(torch.cat([head, body]), 1)


def sparse_decode(packed: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``sparse_encode``: (level (n,) int64, negative (n,) bool)."""
    bits = _bit_string(packed)
    index, sign, value, at = [], [], [], -1
    try:
        count, pos = _read(bits, 0)
        for _ in range(count - 1):
            gap, pos = _read(bits, pos)
            at += gap
            index.append(at)
            sign.append(bits[pos] == "1")
            level, pos = _read(bits, pos + 1)
            value.append(level)
    except IndexError:
        raise ValueError(f"QSGD code of {packed.numel()} bytes ends inside a code") from None
    level = torch.zeros(n, dtype=torch.int64)
    negative = torch.zeros(n, dtype=torch.bool)
    if index:
        if index[-1] >= n:
            raise ValueError(f"QSGD code addresses entry {index[-1]} of a tensor of {n}")
        where = torch.tensor(index)
        level[where] = torch.tensor(value, dtype=torch.int64)
        negative[where] = torch.tensor(sign)
    return level, negative

