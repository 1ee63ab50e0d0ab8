"""What autograd keeps, counted with its own saved-tensor hooks (shared by the engine tests)."""

from __future__ import annotations

import torch
from torch import nn


def saved_bytes(model: nn.Module, run) -> tuple[int, object]:
    """(bytes autograd keeps while ``run()`` executes, its result): unique storages of the
    saved tensors, parameters and buffers excluded."""
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return sum(seen.values()), out
