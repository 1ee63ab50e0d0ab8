"""What travels: bit packing, narrow index codes, the byte image of a payload, seeds.

Bit-level codes (signs, levels) are packed by ``pack_bits`` (the package's one bit
packer): codes most significant bit first, bytes filled from their top bit down, as
``numpy.packbits``; QSGD's 4-bit levels put code 2j in the high nibble of byte j.

Every helper here is pure and deterministic, so a sender and a receiver that
share a configuration agree bit for bit.
"""

from __future__ import annotations

import hashlib

import torch

from .._bits import pack_bits, unpack_bits

__all__ = ["Payload", "decode_index", "derive_seed", "encode_index", "generator", "index_dtype",
           "pack_bits", "payload_from_bytes", "payload_nbytes", "payload_to_bytes",
           "unpack_bits"]

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
