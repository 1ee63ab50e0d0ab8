"""Which custom forwards the lean engine runs without its functional mode (odtkit.engine._calls):
only where the code provably calls no routed activation; everywhere else the mode stays,
and a functional ReLU keeps its bit mask (checked by measuring what autograd keeps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import odtkit as odt
from odtkit.engine._calls import needs_mode


def _helper(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


class Modules(nn.Module):  # module calls, a residual add, torch.flatten: no mode needed
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.head = nn.Linear(4 * 6 * 6, 3)
        self.scale = 2.0

    def forward(self, x):
        y = self.relu(self.conv(x))
        y = y + y * self.scale
        return self.head(torch.flatten(y, 1))


class Functional(Modules):  # F.relu
    def forward(self, x):
        return self.head(torch.flatten(F.relu(self.conv(x)), 1))


class Method(Modules):  # Tensor.relu
    def forward(self, x):
        return self.head(torch.flatten(self.conv(x).relu(), 1))


class Stored(Modules):  # a function kept as an attribute
    def __init__(self) -> None:
        super().__init__()
        self.act = F.relu

    def forward(self, x):
        return self.head(torch.flatten(self.act(self.conv(x)), 1))


class Helper(Modules):  # a module-level helper that calls F.relu
    def forward(self, x):
        return self.head(torch.flatten(_helper(self.conv(x)), 1))


class OwnMethod(Modules):  # a method of self
    def act(self, x):
        return torch.relu(x)

    def forward(self, x):
        return self.head(torch.flatten(self.act(self.conv(x)), 1))


class Comprehension(Modules):  # nested code
    def forward(self, x):
        parts = [self.conv(x) for _ in range(1)]
        return self.head(torch.flatten(self.relu(parts[0]), 1))


class Composite(nn.Module):  # torch's TransformerEncoderLayer calls F.relu inside torch
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


def test_only_provably_clean_forwards_skip_the_mode() -> None:
    assert needs_mode(Modules(), Modules.forward) is False
    for cls in (Functional, Method, Stored, Helper, OwnMethod, Comprehension):
        assert needs_mode(cls(), cls.forward) is True, cls.__name__
    assert needs_mode(Composite(), Composite.forward) is True


def test_routed_calls_keep_their_masks_wherever_the_mode_is_needed() -> None:
    """Every model above, lean with a frozen first layer: the measured activation bytes
    equal the lean estimate (a functional ReLU routed or not would differ by 31/32 of its
    input), and a forward with a routed call keeps the mode."""
    x = torch.randn(2, 3, 6, 6)
    for cls in (Modules, Functional, Method, Stored, Helper, OwnMethod, Comprehension):
        torch.manual_seed(0)
        model = cls()
        plan = odt.plan(model, "bias-only")
        lean = odt.lean(model, plan)
        assert lean.__dict__["lean_needs_mode"] is (cls is not Modules), cls.__name__
        est = odt.estimate(model, x, plan, engine="lean")
        meas = odt.measure(model, x, plan, engine="lean", rss=False)
        assert est.by_category == meas.by_category, cls.__name__


def test_a_skipped_forward_gives_stocks_gradients() -> None:
    torch.manual_seed(0)
    model = Modules()
    plan = odt.plan(model, "bias-only")
    stock = plan.apply_(Modules())
    stock.load_state_dict(model.state_dict())
    lean = odt.lean(model, plan)
    x = torch.randn(2, 3, 6, 6)
    for m in (stock, lean):
        F.cross_entropy(m(x), torch.tensor([0, 2])).backward()
    for p, q in zip(stock.parameters(), lean.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-6, atol=1e-7)
