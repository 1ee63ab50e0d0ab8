"""What travels: bit packing, narrow index codes, the byte image of a payload, seeds.

Every helper here is pure and deterministic, so a sender and a receiver that
share a configuration agree bit for bit.
"""

from __future__ import annotations

import hashlib
import math

import torch

Payload = tuple[torch.Tensor, ...]

# (largest numel that fits, dtype, offset subtracted before the cast)
_INDEX_CODES: tuple[tuple[int, torch.dtype, int], ...] = (
    (2**8, torch.uint8, 0),
    (2**16, torch.int16, 2**15),
    (2**32, torch.int32, 2**31),
    (2**63, torch.int64, 0),
)


def index_dtype(numel: int) -> torch.dtype:
    """The narrowest integer type that addresses ``numel`` entries (see ``encode_index``)."""
    return _index_code(numel)[0]


def _index_code(numel: int) -> tuple[torch.dtype, int]:
    for limit, dtype, offset in _INDEX_CODES:
        if numel <= limit:
            return dtype, offset
    raise ValueError(f"numel={numel} does not fit in int64 indices")


def encode_index(index: torch.Tensor, numel: int) -> torch.Tensor:
    """Positions (int64, in [0, numel)) as the narrowest wire type.

    uint8 up to 256 entries; int16 up to 65,536 and int32 up to 2**32 entries,
    both shifted by -2**15 / -2**31 so that unsigned ranges fit signed types
    (torch lacks arithmetic on uint16/uint32); int64 beyond.
    """
    dtype, offset = _index_code(numel)
    return (index.to(torch.int64) - offset).to(dtype)


def decode_index(code: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``encode_index``: int64 positions."""
    _, offset = _index_code(numel)
    return code.to(torch.int64) + offset


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack small unsigned codes (each < 2**bits) into bytes, little-endian bit order.

    (n,) integer codes -> (ceil(n * bits / 8),) uint8.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    codes = codes.reshape(-1).to(torch.uint8)
    n = codes.numel()
    if 8 % bits == 0:  # whole codes per byte: shift and add, no bit planes
        per = 8 // bits
        padded = torch.zeros(math.ceil(n / per) * per, dtype=torch.uint8, device=codes.device)
        padded[:n] = codes
        shifts = torch.arange(per, device=codes.device, dtype=torch.uint8) * bits
        return (padded.view(-1, per) << shifts).sum(1, dtype=torch.uint8)
    shifts = torch.arange(bits, device=codes.device, dtype=torch.uint8)
    planes = ((codes.unsqueeze(1) >> shifts) & 1).reshape(-1)  # (n * bits,) in {0, 1}
    flat = torch.zeros(math.ceil(n * bits / 8) * 8, dtype=torch.uint8, device=codes.device)
    flat[: planes.numel()] = planes
    weights = torch.arange(8, device=codes.device, dtype=torch.uint8)
    return (flat.view(-1, 8) << weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: (n,) uint8 codes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    expected = math.ceil(n * bits / 8)
    if packed.numel() != expected:
        raise ValueError(f"{n} codes of {bits} bits need {expected} bytes, got {packed.numel()}")
    packed = packed.reshape(-1).to(torch.uint8)
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * bits
        return ((packed.unsqueeze(1) >> shifts) & mask).reshape(-1)[:n]
    weights = torch.arange(8, device=packed.device, dtype=torch.uint8)
    planes = ((packed.unsqueeze(1) >> weights) & 1).reshape(-1)[: n * bits].view(n, bits)
    shifts = torch.arange(bits, device=packed.device, dtype=torch.uint8)
    return (planes << shifts).sum(1, dtype=torch.uint8)


def payload_nbytes(payload: Payload) -> int:
    """Bytes on the wire: every tensor's raw bytes, nothing else."""
    return sum(t.numel() * t.element_size() for t in payload)


def payload_to_bytes(payload: Payload) -> bytes:
    """The raw byte image of a payload (tensors concatenated, no header)."""
    chunks = []
    for t in payload:
        flat = t.detach().reshape(-1).contiguous().cpu()
        chunks.append(flat.view(torch.uint8).numpy().tobytes())
    return b"".join(chunks)


def payload_from_bytes(data: bytes, like: Payload) -> Payload:
    """Rebuild a payload from its byte image, given the dtypes and shapes of ``like``.

    The receiver knows those from the shared configuration and the tensor's shape
    (or, for variable-length sparse payloads, from the message length).
    """
    out, start = [], 0
    for t in like:
        size = t.numel() * t.element_size()
        raw = torch.frombuffer(bytearray(data[start : start + size]), dtype=torch.uint8)
        out.append(raw.view(t.dtype).reshape(t.shape))
        start += size
    if start != len(data):
        raise ValueError(f"payload image has {len(data)} bytes, the layout needs {start}")
    return tuple(out)


def derive_seed(seed: int, name: str, step: int) -> int:
    """A 63-bit seed from (seed, tensor name, step): same inputs, same random draws."""
    digest = hashlib.blake2b(f"{seed}/{name}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator seeded with ``seed`` on ``device``."""
    return torch.Generator(device=device).manual_seed(seed)
