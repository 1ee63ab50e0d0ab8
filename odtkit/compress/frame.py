"""One message carrying several payloads (a rank's share of a DDP bucket): a fixed binary
header, then the raw tensors. Nothing received is unpickled or evaluated; every field a
peer sends is checked against what the receiver computed for the same tensors.

Layout, little-endian (struct formats in brackets):

    magic b"ODTF" [4s]  version [B]  tensor count [I]
    per tensor      payload tensors t [B]  metadata entries e [B]
                    e x  key: length [B] + ASCII,  value type [B] + value:
                         0 int [q], 1 float [d], 2 bool [?], 3 text: length [B] + ASCII
                    t x  dtype code [B]  ndim [B]  ndim x size [I]
    then every payload tensor's raw bytes in order (``payload_to_bytes``)

dtype codes: 1 float32, 2 float16, 3 bfloat16, 4 float64, 5 uint8, 6 int8, 7 int16,
8 int32, 9 int64. At most 16 metadata entries, 32 ASCII characters per key or text,
8 tensors per payload and 4 dimensions per tensor.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import struct
from collections.abc import Sequence

import torch

from .base import Ctx
from .wire import Payload, payload_nbytes, payload_to_bytes

__all__ = ["FrameError", "frame", "frame_nbytes", "max_frame_bytes", "unframe"]

MAGIC = b"ODTF"
VERSION = 1
DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.float16, 3: torch.bfloat16, 4: torch.float64, 5: torch.uint8,
    6: torch.int8, 7: torch.int16, 8: torch.int32, 9: torch.int64,
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
INT, FLOAT, BOOL, TEXT = range(4)
MAX_META, MAX_TEXT, MAX_TENSORS, MAX_NDIM = 16, 32, 8, 4
_HEAD = "<4sBI"
_ENTRY_MAX_BYTES = 2 + MAX_META * (2 + 2 * MAX_TEXT + 1) + MAX_TENSORS * (2 + 4 * MAX_NDIM)

Compressed = Sequence[tuple[Payload, Ctx]]


class FrameError(ValueError):
    """A message from a peer that is not a well-formed frame for this bucket."""


# -- writing ---------------------------------------------------------------
def frame(compressed: Compressed) -> bytes:
    """The message for ``[(payload, ctx), ...]``: header, then the payloads' raw bytes."""
    parts = [struct.pack(_HEAD, MAGIC, VERSION, len(compressed))]
    parts += [_entry(payload, ctx) for payload, ctx in compressed]
    parts += [payload_to_bytes(payload) for payload, _ in compressed]
    return b"".join(parts)


def _entry(payload: Payload, ctx: Ctx) -> bytes:
    if len(payload) > MAX_TENSORS or len(ctx.meta) > MAX_META:
        raise ValueError(f"{ctx.name!r}: a frame carries at most {MAX_TENSORS} tensors and "
                         f"{MAX_META} metadata entries, got {len(payload)} and {len(ctx.meta)}")
    out = [struct.pack("<BB", len(payload), len(ctx.meta))]
    for key, value in ctx.meta.items():
        out += [_text(key, ctx.name), _value(key, value, ctx.name)]
    for t in payload:
        if t.dtype not in CODES or t.dim() > MAX_NDIM or max(t.shape, default=0) >= 2**32:
            raise ValueError(f"{ctx.name!r}: a frame carries tensors of dtype "
                             f"{', '.join(str(d) for d in CODES)} with at most {MAX_NDIM} "
                             f"dimensions under 2**32, got {t.dtype} of shape {tuple(t.shape)}")
        out.append(struct.pack(f"<BB{t.dim()}I", CODES[t.dtype], t.dim(), *t.shape))
    return b"".join(out)


def _kind(value: object) -> int | None:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, numbers.Integral):
        return INT
    if isinstance(value, numbers.Real):
        return FLOAT
    return TEXT if isinstance(value, str) else None


def _text(text: str, name: str) -> bytes:
    raw = text.encode("ascii", errors="replace")
    if len(raw) > MAX_TEXT or not text.isascii():
        raise ValueError(f"{name!r}: frame metadata text is ASCII of at most {MAX_TEXT} "
                         f"characters, got {text!r}")
    return struct.pack("<B", len(raw)) + raw


def _value(key: str, value: object, name: str) -> bytes:
    kind = _kind(value)
    if kind == TEXT:
        return struct.pack("<B", TEXT) + _text(str(value), name)
    if kind is None:
        raise ValueError(f"ctx.meta[{key!r}] of {name!r} is a {type(value).__name__}; frame "
                         "metadata is int, float, bool or short ASCII text")
    fmt = {INT: "q", FLOAT: "d", BOOL: "?"}[kind]
    cast = {INT: int, FLOAT: float, BOOL: bool}[kind]
    return struct.pack(f"<B{fmt}", kind, cast(value))  # type: ignore[operator]


def frame_nbytes(compressed: Compressed) -> int:
    """``len(frame(compressed))`` without building the message: header plus payloads."""
    size = struct.calcsize(_HEAD)
    for payload, ctx in compressed:
        size += 2 + sum(2 + 4 * t.dim() for t in payload) + payload_nbytes(payload)
        for key, value in ctx.meta.items():
            kind = _kind(value)
            size += 2 + len(key) + {INT: 8, FLOAT: 8, BOOL: 1}.get(kind, 1 + len(str(value)))
    return size


def max_frame_bytes(local: Compressed, *, fixed_size: bool = True) -> int:
    """The longest message a peer may send for this bucket: the header limits, and the
    local payload sizes (fixed layouts) or 16 bytes an entry (variable sparse ones)."""
    body = sum(payload_nbytes(p) if fixed_size else max(payload_nbytes(p), 16 * ctx.numel)
               for p, ctx in local)
    return struct.calcsize(_HEAD) + len(local) * _ENTRY_MAX_BYTES + body


# -- reading ---------------------------------------------------------------
class _Reader:
    """A cursor over a peer's bytes; every read is bounds-checked."""

    def __init__(self, data: bytes, sender: int) -> None:
        self.data, self.pos, self.sender = data, 0, sender

    def error(self, what: str) -> FrameError:
        return FrameError(f"malformed message from rank {self.sender}: {what}. Every rank must "
                          "run the same odtkit version, model and compressor settings; "
                          "anything else (or a corrupted link) is refused")

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise self.error(f"it ends after {len(self.data)} bytes, inside its header "
                             f"(a field at byte {self.pos} needs {size} more): truncated")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def text(self, what: str) -> str:
        (size,) = self.take("<B")
        if size > MAX_TEXT:
            raise self.error(f"{what} has {size} characters, at most {MAX_TEXT} are allowed")
        (raw,) = self.take(f"<{size}s")
        if not raw.isascii():
            raise self.error(f"{what} {raw!r} is not ASCII text")
        return raw.decode("ascii")

    def value(self, what: str) -> object:
        (kind,) = self.take("<B")
        if kind == TEXT:
            return self.text(what)
        if kind not in (INT, FLOAT, BOOL):
            raise self.error(f"{what} has value type {kind}; known types are 0-3")
        return self.take("<" + {INT: "q", FLOAT: "d", BOOL: "?"}[kind])[0]


def unframe(image: bytes, local: Compressed, *, sender: int,
            fixed_size: bool = True) -> list[tuple[Payload, Ctx]]:
    """Parse a peer's message into ``[(payload, ctx), ...]``, checked field by field against
    ``local`` (this rank's own payloads and contexts for the same tensors): count, dtypes,
    shapes (equal for fixed layouts, at most numel entries otherwise), metadata keys and
    types, and the total size. Anything else raises FrameError naming ``sender``."""
    r = _Reader(bytes(image), sender)
    magic, version, count = r.take(_HEAD)
    if magic != MAGIC:
        raise r.error(f"it starts with {magic!r}, not the frame magic {MAGIC!r}")
    if version != VERSION:
        raise r.error(f"frame version {version}, this rank reads version {VERSION}")
    if count != len(local):
        raise r.error(f"it describes {count} tensors, this bucket has {len(local)}")
    entries = [_read_entry(r, payload, ctx, fixed_size) for payload, ctx in local]
    need = sum(math.prod(shape) * _itemsize(dtype) for _, layout in entries
               for dtype, shape in layout)
    if r.pos + need != len(r.data):
        raise r.error(f"it has {len(r.data)} bytes, but its {r.pos}-byte header describes "
                      f"{need} bytes of tensors after it (truncated or padded)")
    out, pos = [], r.pos
    for (meta, layout), (_, ctx) in zip(entries, local, strict=True):
        tensors = []
        for dtype, shape in layout:
            size = math.prod(shape) * _itemsize(dtype)
            raw = torch.frombuffer(bytearray(r.data[pos:pos + size]), dtype=torch.uint8)
            tensors.append(raw.view(dtype).reshape(shape) if size
                           else torch.empty(shape, dtype=dtype))
            pos += size
        out.append((tuple(tensors), dataclasses.replace(ctx, meta=meta)))
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _read_entry(r: _Reader, mine: Payload, ctx: Ctx, fixed_size: bool) -> tuple[dict, list]:
    """One tensor's metadata and layout, checked against this rank's payload for it."""
    count, entries = r.take("<BB")
    if count != len(mine) or entries != len(ctx.meta):
        raise r.error(f"{ctx.name!r} comes as {count} tensors with {entries} metadata entries, "
                      f"expected {len(mine)} and {len(ctx.meta)}")
    meta: dict[str, object] = {}
    for _ in range(entries):
        key = r.text(f"a metadata key of {ctx.name!r}")
        value = r.value(f"metadata {key!r} of {ctx.name!r}")
        if key in meta or key not in ctx.meta or _kind(value) != _kind(ctx.meta[key]):
            raise r.error(f"metadata {key}={value!r} of {ctx.name!r} does not match the "
                          f"expected keys and types {ctx.meta!r}")
        meta[key] = value
    layout = []
    for i, t in enumerate(mine):
        code, ndim = r.take("<BB")
        if DTYPES.get(code) != t.dtype or ndim != t.dim():
            raise r.error(f"tensor {i} of {ctx.name!r} has dtype code {code} and {ndim} "
                          f"dimensions, expected {t.dtype} (code {CODES[t.dtype]}) in {t.dim()}")
        shape = r.take(f"<{ndim}I")
        ok = shape == tuple(t.shape) if fixed_size else math.prod(shape) <= ctx.numel
        if not ok:
            want = tuple(t.shape) if fixed_size else f"at most {ctx.numel} entries"
            raise r.error(f"tensor {i} of {ctx.name!r} has shape {shape}, expected {want}")
        layout.append((t.dtype, shape))
    return meta, layout
