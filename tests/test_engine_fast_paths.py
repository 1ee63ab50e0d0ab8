"""The lean engine's faster kernels against stock PyTorch: a frozen 1x1 conv's input
gradient by torch's convolution_backward on a shape-only stand-in, and clamp masks built
chunk by chunk (one ``split`` per tensor).

The references are stock autograd's own gradients (compared bit for bit: the lean
engine promises the same numbers) and torch.autograd.gradcheck in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import odtkit as odt
from odtkit.engine import _masks

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _input_grads(model: nn.Module, x: torch.Tensor, after=lambda y: y) -> torch.Tensor:
    x = x.clone().requires_grad_()
    y = after(model(x))
    y.backward(torch.linspace(-1, 1, y.numel()).view(y.shape))
    return x.grad


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(("batch", "side"), [(1, 6), (3, 6), (64, 1), (64, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_frozen_pointwise_conv_input_grad_is_stocks_bit_for_bit(dims, batch, side, bias):
    """(A matmul of W^T and dy is the same sum, but rounds differently at batch 64 on
    1x1 and 2x2 maps, the shapes of a squeeze-excitation.)"""
    torch.manual_seed(dims * 10 + batch)
    conv = CONVS[dims](48, 12, 1, bias=bias)
    x = torch.randn(batch, 48, *[side] * dims)
    plan = odt.plan(conv, "bias-only" if bias else "none")
    stock = plan.apply_(copy.deepcopy(conv))
    stock.weight.requires_grad_(False)
    lean = odt.lean(conv, plan)
    assert torch.equal(_input_grads(lean, x), _input_grads(stock, x))
    # a non-contiguous incoming gradient takes the transposed conv: the same numbers
    swap = lambda y: y.transpose(1, -1)  # noqa: E731
    assert torch.equal(_input_grads(lean, x, swap), _input_grads(stock, x, swap))


def test_frozen_pointwise_conv_passes_gradcheck_in_float64():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 1)
    lean = odt.lean(conv, odt.plan(conv, "bias-only")).double()  # the plan is for fp32
    assert not lean.weight.requires_grad
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    # the lean conv's bias is the second input: gradcheck perturbs it in place
    assert torch.autograd.gradcheck(lambda t, _: lean(t), (x, lean.bias))


def test_strided_and_padded_convs_keep_the_transposed_conv_path():
    torch.manual_seed(1)
    for conv in (nn.Conv2d(6, 4, 1, stride=2), nn.Conv2d(6, 4, 1, padding=1),
                 nn.Conv2d(6, 6, 1, groups=2)):
        plan = odt.plan(conv, "bias-only")
        stock = plan.apply_(copy.deepcopy(conv))
        lean = odt.lean(conv, plan)
        x = torch.randn(2, 6, 7, 7)
        assert torch.equal(_input_grads(lean, x), _input_grads(stock, x))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3 * _masks.CHUNK + 5), seed=st.integers(0, 2**16),
       act=st.sampled_from(["relu6", "hardtanh"]))
def test_chunked_clamp_masks_pass_what_torch_passes(n, seed, act):
    """Sizes on both sides of the one-piece limit (SMALL) and across several chunks, the
    clamp's edges included: the lean gradient equals torch's. (No NaN inputs: torch's own
    hardtanh_backward passes a NaN's gradient in its scalar tail and not in its vector
    body, so where a NaN lands decides, in torch as in the chunks.)"""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * 4
    x[torch.randint(0, n, (max(1, n // 50),), generator=gen)] = 6.0
    x[torch.randint(0, n, (max(1, n // 50),), generator=gen)] = -1.0
    module = nn.ReLU6() if act == "relu6" else nn.Hardtanh(-1.0, 2.0)
    lean = odt.lean(module, odt.plan(module, "none"))
    g = torch.randn(n, generator=gen)
    grads = []
    for m in (module, lean):
        xi = x.clone().requires_grad_()
        m(xi).backward(g)
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])


def test_mask_from_chunks_equal_one_piece():
    n = 2 * _masks.CHUNK + 3
    y = torch.randn(n)
    chunked = _masks.mask_from(torch.relu, y)
    assert _masks.chunk_of(n) < n and torch.equal(chunked, torch.relu(y).bool())
