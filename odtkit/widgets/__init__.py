"""The ipywidgets explorers: thin views over the same pure functions the tests cover.

One submodule per theme; every public name is reachable as ``odt.widgets.NAME``.
This package is the only place in odtkit that imports ipywidgets.
"""

from .._lazy import part_lookup

__getattr__, __dir__ = part_lookup(__name__, ("memory", "compression", "quant",
                                               "sparse", "capstone"), "explorer")
