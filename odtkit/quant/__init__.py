"""Quantized training: quantizers, fake-quant QAT, the int8 graph a microcontroller runs,
quantization-aware scaling (QAS).

    q = odt.quant.quantize(w, bits=8, axis=0)          # QTensor: integers, scale, zero point
    odt.quant.prepare_qat_(model, odt.quant.QATConfig())
    int8 = odt.quant.to_int8(odt.quant.fold_bn_(model), calibration_inputs)
"""

from __future__ import annotations

from .._lazy import export_lookup

# public name -> module of this package that defines it (loaded on first use)
_EXPORTS = {
    "QTensor": "quantizers", "quantize": "quantizers", "dequantize": "quantizers",
    "fake_quantize": "quantizers", "ROUNDINGS": "quantizers",
    "QATConfig": "qat", "prepare_qat_": "qat", "fold_bn_": "qat",
    "to_int8": "int8", "Int8Model": "int8",
    "PRECISIONS": "precision", "Precision": "precision", "precision_info": "precision",
    "fp8_cast": "precision", "fp8_autocast": "precision",
    "qas_": "qas", "norm_ratios": "qas", "round_after_step_": "qas", "QAS": "qas",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = export_lookup(__name__, _EXPORTS)
