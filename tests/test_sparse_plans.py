"""Channel-sparse plans: the TrainPlan.channels field, odt.train keeping frozen entries
bit-identical, and the lean engine keeping only the selected input channels.

References: stock PyTorch autograd with the gradient masked (lean engine), and a stock
torch.nn.utils.parametrize model whose only trainable tensor is the selected slice
(training), which stock torch optimizers update.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import odtkit as odt


class Net(nn.Module):
    """conv (full) -> depthwise conv -> grouped conv -> linear, on (3, 8, 8) inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.group = nn.Conv2d(8, 8, 1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = torch.relu(self.group(self.dw(x)))
        return self.fc(x.flatten(1))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


# ---------------------------------------------------------------- the plan


def test_channels_are_canonical_hashable_and_counted(net: Net) -> None:
    base = odt.plan(net, "full")
    p = base.with_channels({"fc.weight": (1, [5, 1, 3]), "conv.weight": (0, range(4))})
    assert p.channels == (("conv.weight", 0, (0, 1, 2, 3)), ("fc.weight", 1, (1, 3, 5)))
    same = odt.plan(net, "full", channels={"conv.weight": (0, [3, 2, 1, 0]),
                                           "fc.weight": (1, torch.tensor([1, 3, 5]))})
    assert p == same and hash(p) == hash(same) and p != base
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.channels = ()  # type: ignore[misc]
    removed = 8 * 3 * 3 * 3 // 2 + 5 * (128 - 3)
    assert p.trainable_numel == base.trainable_numel - removed
    assert p.trainable_share == pytest.approx(p.trainable_numel / p.total_numel)
    masks = p.masks()
    assert set(masks) == {"conv.weight", "fc.weight"}
    assert int(masks["fc.weight"].sum()) == 5 * 3 and bool(masks["fc.weight"][:, 3].all())
    assert int(masks["conv.weight"].sum()) == 4 * 27 and not masks["conv.weight"][4:].any()
    # two dims of one parameter intersect; a later entry for the same dim replaces
    both = p.with_channels({"fc.weight": [(0, [0, 4]), (1, [7])]})
    assert both.channels[1:] == (("fc.weight", 0, (0, 4)), ("fc.weight", 1, (7,)))
    assert int(both.masks()["fc.weight"].sum()) == 2


@pytest.mark.parametrize(("selection", "error", "match"), [
    ({"fc.wieght": (1, [0])}, ValueError, r"unknown parameter .*'fc\.wieght'.*Did you mean "
                                          r"'fc\.weight'"),
    ({"fc.weight": (2, [0])}, ValueError, r"dim 2: fc\.weight has shape \(5, 128\), so dim "
                                          r"must be one of 0 \(out, size 5\), 1 \(in, size 128\)"),
    ({"fc.weight": (0, [5])}, ValueError, r"indices \[5\] out of range; valid indices are 0\.\.4"),
    ({"fc.weight": (0, [-1])}, ValueError, r"indices \[-1\] out of range"),
    ({"fc.weight": (0, [])}, ValueError, "no index selected"),
    ({"fc.weight": (0, [1, 2, 1])}, ValueError, r"indices \[1\] are selected more than once"),
    ({"fc.weight": (0, [1.0])}, TypeError, "an index must be an integer"),
    ({"fc.weight": (1.5, [1])}, TypeError, "dim .* must be an integer"),
    ({"fc.weight": [1, 2]}, TypeError, r"must be \(dim, indices\)"),
    ({"fc.weight": (0, "01")}, TypeError, "sequence of integers"),
])
def test_bad_selections_name_the_value_and_the_choices(net, selection, error, match) -> None:
    with pytest.raises(error, match=match):
        odt.plan(net, "full").with_channels(selection)


def test_a_frozen_parameter_cannot_select_channels(net: Net) -> None:
    with pytest.raises(ValueError, match=r"'conv\.weight', which the plan freezes"):
        odt.plan(net, "bias-only", channels={"conv.weight": (1, [0])})
    p = odt.plan(net, "full", channels={"conv.weight": (1, [0])})
    with pytest.raises(ValueError, match="which the plan freezes"):
        dataclasses.replace(p, trainable=p.trainable - {"conv.weight"})
    with pytest.raises(TypeError, match="channels must be a tuple"):
        dataclasses.replace(p, channels={"conv.weight": (1, [0])})


def test_describe_shows_the_selected_channels(net: Net) -> None:
    p = odt.plan(net, ["conv.weight", "conv.bias", "dw.weight", "fc.weight"], channels={
        "conv.weight": (1, [0, 2]), "dw.weight": (0, [1, 2, 3, 6]),
        "fc.weight": (1, list(range(0, 128, 3)))})
    text = p.describe()
    lines = text.splitlines()
    assert lines[0] == ("TrainPlan 'names': precision fp32, recompute none, "
                        "3 channel selections")
    assert lines[1].split() == ["parameter", "shape", "numel", "trains", "channels"]
    row = {line.split()[0]: line for line in lines[3:-1]}
    assert row["conv.weight"].endswith("part    in 2/3 (67%): 0, 2")
    assert row["conv.bias"].rstrip().endswith("yes") and row["group.bias"].endswith("no")
    assert row["dw.weight"].endswith("out 4/8 (50%): 1-3, 6")
    fc = row["fc.weight"]
    assert "in 43/128 (34%): 0, 3, 6," in fc and fc.endswith(", ...") and len(fc) < 120
    assert lines[-1].startswith(f"trainable {p.trainable_numel:,} of ")
    assert "<th>channels</th>" in p._repr_html_() and "1-3, 6" in p._repr_html_()
    assert "channels=3 selections" in repr(p)
