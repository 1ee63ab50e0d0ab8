"""Gradient compressors and error feedback, one contract for all of them.

The contract (every compressor, and ErrorFeedback around any of them):

- ``compress(tensor, name) -> (payload, ctx)``. ``payload`` is a tuple of tensors,
  exactly what would travel on the wire; bit-level codes are already packed into
  uint8 tensors. ``ctx`` (a ``Ctx``) holds what the receiver knows without it
  travelling: name, shape, dtype, the per-name step and config-derived meta
  (for shared-seed schemes, the seed derived from (seed, name, step)).
  ``name`` identifies the tensor: per-tensor state lives in the compressor under it.
- ``decompress(payload, ctx) -> tensor`` of the input's shape and dtype.
- ``nbytes(payload) -> int``: exact bytes on the wire, values, indices, scales
  and norms included; equals sum(t.numel() * t.element_size()) and
  ``len(payload_to_bytes(payload))``.
- Hints: ``unbiased`` (E[decompress(compress(g))] == g), ``biased``, ``summable``
  (workers' payloads add up entry by entry, so they can be all-reduced: the dense
  casts and random-k with a ``shared_seed``),
  ``fixed_size`` (payload shapes follow from the tensor's shape and the config;
  False for threshold and DGC, whose count varies), ``stochastic`` (draws seeded
  by (seed, name, step), so a fresh compressor with the same seed replays the same
  numbers), ``needs_error_feedback`` (biased enough to want ErrorFeedback),
  ``feedback_builtin`` (keeps its own residual).
- State: ``state_dict()``, ``load_state_dict(state)``, ``reset()``; every
  compressor counts steps per name, stateful ones document what else they keep.
- Bad input raises ValueError naming the value and tensor: a density outside
  (0, 1], a rank outside [1, min(n, m)], levels < 1, a NaN/Inf gradient. The NaN/Inf
  check rides on a reduction the compressor computes anyway (a norm, a largest
  magnitude, the sent values) and scans the tensor only when that result is not finite.
  The dense three are the exception, transparent as PyTorch's allreduce and fp16/bf16
  hooks: 'none' sends NaN and inf as they are and the casts map them to NaN and inf of
  their dtype (ErrorFeedback around them still refuses them: its residual would keep
  them for ever). What 'fp16' and 'bf16' refuse is a finite entry their cast turns into
  inf, found exactly in the pass that writes the payload (odtkit's compiled cast) or by
  one sum of the 16-bit payload (torch's ops alone; ``odtkit.compress.cast``).
- Names are case- and separator-insensitive everywhere: ``get("DGC")`` is ``get("dgc")``,
  ``canonical_name("EF_SignSGD") == "ef-signsgd"``; an unknown name lists the choices.
- Range: ``decompress(compress(g))`` is finite for every finite g (norms and means are
  summed in float64, products scaled by powers of two). Where the exact result is not
  representable in the tensor's dtype (|g| above the fp16/bf16 maximum for those casts,
  a QSGD bucket norm or a PowerSGD column norm above 3.4e38, a float16 tensor decoding
  above 65504), ``compress`` refuses with a ValueError that names the tensor and value.

Wire layouts (n entries; idx = uint8 / int16 / int32 / int64 for n <= 2**8 / 2**16 /
2**32 / more, see ``encode_index``):

    none        the tensor in its own dtype          fp16, bf16  2 bytes per entry
                (NaN/inf sent as they are)                       (NaN/inf cast as they are)
    topk        k fp32 values + k idx                randomk     k fp32 values (seeded
                                                                 positions, O(k) sampler)
    threshold   fp32 values + idx of |g| > t         dgc         <= k fp32 values + idx
    qsgd        fp32 norm per bucket + 1 sign bit + ceil(log2(s+1)) level bits per entry
    qsgd elias  fp32 norm per bucket + the paper's Elias omega stream (``elias``)
    terngrad    fp32 scale + 2 bits per entry        signsgd     1 bit per entry (+ fp32 mean)
    ef-signsgd  fp32 scale + 1 bit per entry         powersgd    r(n+m) fp32 (1-D: dense fp32)

Tensors follow each other in that order (``payload_to_bytes``). Bit codes are packed
most significant bit first, bytes filled from the top bit down as ``numpy.packbits``
(``pack_bits``, the package's one bit packer). Several payloads travel together as a
``frame``: a fixed binary header (dtype codes, shapes, typed metadata), never a pickle;
``unframe`` checks every field a peer sends (see ``odtkit.compress.frame``).

    import odtkit as odt
    c = odt.compress.get("topk", density=0.01)
    payload, ctx = c.compress(grad, "fc.weight")
    approx = c.decompress(payload, ctx); wire_bytes = c.nbytes(payload)
    ef = odt.compress.get("powersgd", rank=2, error_feedback=True)
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass

import torch

from .._checks import lookup
from .base import Compressor, Ctx
from .cast import BF16, FP16, NoCompression
from .dgc import DGC, warmup_density
from .feedback import EFSignSGD, ErrorFeedback
from .frame import FrameError, frame, max_frame_bytes, unframe
from .lowrank import PowerSGD, matrix_shape, orthogonalize
from .quantize import QSGD, SignSGD, TernGrad
from .sparsify import RandomK, Threshold, TopK, sample_positions
from .wire import (
    decode_index,
    encode_index,
    index_dtype,
    pack_bits,
    payload_from_bytes,
    payload_nbytes,
    payload_to_bytes,
    unpack_bits,
)

__all__ = [
    "BF16", "DGC", "FP16", "QSGD", "Compressor", "Ctx", "EFSignSGD", "ErrorFeedback",
    "FrameError", "NoCompression", "PowerSGD", "RandomK", "SignSGD", "TernGrad", "Threshold",
    "TopK", "WireReport", "bits_per_element", "canonical_name", "compression_ratio",
    "decode_index",
    "encode_index", "frame", "get", "index_dtype", "matrix_shape", "max_frame_bytes", "names",
    "orthogonalize", "pack_bits", "payload_from_bytes", "payload_nbytes", "payload_to_bytes",
    "sample_positions", "unframe", "unpack_bits", "warmup_density", "wire_report",
]

_REGISTRY: dict[str, type[Compressor]] = {
    "none": NoCompression,
    "fp16": FP16,
    "bf16": BF16,
    "topk": TopK,
    "randomk": RandomK,
    "threshold": Threshold,
    "dgc": DGC,
    "qsgd": QSGD,
    "terngrad": TernGrad,
    "signsgd": SignSGD,
    "ef-signsgd": EFSignSGD,
    "powersgd": PowerSGD,
}


def names() -> tuple[str, ...]:
    """Registered compressor names, for ``get``."""
    return tuple(_REGISTRY)


def canonical_name(name: str) -> str:
    """The registered name ``name`` means, case and separators ignored ('DGC' -> 'dgc');
    an unknown name raises a ValueError listing the choices. Compare names through it."""
    return lookup("compressor", name, _REGISTRY)


def get(name: str, *, error_feedback: bool = False, **kwargs: object) -> Compressor:
    """Build the compressor called ``name`` with its keyword arguments.

    ``error_feedback=True`` wraps it in ErrorFeedback (refused for compressors that
    keep their own residual: 'dgc', 'ef-signsgd').
    """
    key = canonical_name(name)
    cls = _REGISTRY[key]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"compressor {key!r} takes no {', '.join(unknown)}; "
                        f"its keywords are {', '.join(allowed)}")
    compressor = cls(**kwargs)
    return ErrorFeedback(compressor) if error_feedback else compressor


@dataclass(frozen=True)
class WireReport:
    """One tensor through one compressor: bytes before and after, and the error made."""

    compressor: str
    numel: int
    dense_bytes: int
    wire_bytes: int
    relative_error: float  # ||D(C(g)) - g|| / ||g|| (0 for a zero g)

    @property
    def ratio(self) -> float:
        """dense_bytes / wire_bytes (the tensor in its own dtype vs the payload)."""
        return self.dense_bytes / self.wire_bytes

    @property
    def bits_per_element(self) -> float:
        return 8.0 * self.wire_bytes / self.numel


def wire_report(compressor: Compressor, tensor: torch.Tensor,
                name: str = "tensor") -> WireReport:
    """Compress ``tensor`` once on a copy of ``compressor`` (its own state is untouched):
    bytes before and after and the relative error (``odt.measure`` is the memory one)."""
    probe = copy.deepcopy(compressor)
    payload, ctx = probe.compress(tensor, name)
    approx = probe.decompress(payload, ctx).double()
    ref = tensor.detach().double()
    norm = float(torch.linalg.vector_norm(ref))
    err = float(torch.linalg.vector_norm(approx - ref)) / norm if norm > 0 else 0.0
    return WireReport(compressor=compressor.kind, numel=tensor.numel(),
                      dense_bytes=tensor.numel() * tensor.element_size(),
                      wire_bytes=probe.nbytes(payload), relative_error=err)


def measure(compressor: Compressor, tensor: torch.Tensor, name: str = "tensor") -> WireReport:
    """Deprecated name of ``wire_report`` (``odt.measure`` measures memory)."""
    warnings.warn("odtkit.compress.measure is deprecated and will be removed: use "
                  "odtkit.compress.wire_report (odt.measure is the memory measurement)",
                  DeprecationWarning, stacklevel=2)
    return wire_report(compressor, tensor, name)


def compression_ratio(compressor: Compressor, tensor: torch.Tensor, name: str = "tensor") -> float:
    """Dense bytes of ``tensor`` over the bytes its payload puts on the wire."""
    return wire_report(compressor, tensor, name).ratio


def bits_per_element(compressor: Compressor, tensor: torch.Tensor, name: str = "tensor") -> float:
    """Wire bits per tensor entry (32 for fp32 sent as is)."""
    return wire_report(compressor, tensor, name).bits_per_element
