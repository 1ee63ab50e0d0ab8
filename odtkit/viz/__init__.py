"""Matplotlib figures: pure functions, data in, Figure out.

One submodule per theme; every public name is reachable as ``odt.viz.NAME``.
"""

from .._lazy import part_lookup

__getattr__, __dir__ = part_lookup(__name__, ("catalogue", "training", "memory", "compression",
                                              "quant",
                                              "sparse"),
                                   "figure")
