"""The memory estimate on the architectures researchers bring (tests/archs.py)."""

from __future__ import annotations

import pytest
import torch
from archs import ARCHS, build, example


@pytest.mark.parametrize("name", list(ARCHS))
def test_archs_are_deterministic_classifiers(name):
    a, b = build(name), build(name)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    assert torch.equal(example(name), example(name))
    logits = a.eval()(example(name, batch_size=3))
    assert logits.shape == (3, ARCHS[name][2])
