"""Norm statistics of a plan: whether normalization layers train on frozen running
statistics ("frozen", eval mode) or on the batch's statistics ("batch", train mode).

A normalization layer with running statistics (BatchNorm*, SyncBatchNorm, and
InstanceNorm* with ``track_running_stats=True``) behaves differently by its mode: in
train mode it normalizes with the batch's statistics and updates the running ones, and
its backward needs an input-sized tensor; in eval mode it uses the frozen running
statistics, which a frozen-weight layer's backward does not need at all. Layers without
running statistics keep whatever mode the caller set (an InstanceNorm without them
normalizes each sample by itself either way); a BatchNorm without them cannot freeze.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ._checks import check_choice

NORM_STATS = ("frozen", "batch")


def check_norm_stats(value: object) -> str:
    """``value`` if it is one of NORM_STATS, else a ValueError naming it and the choices."""
    return check_choice("norm_stats", value, NORM_STATS)


def default_norm_stats(scheme: str) -> str:
    """The norm statistics a plan of ``scheme`` gets when none is given: "batch" for
    "full" (training everything, statistics included), "frozen" for every other scheme
    (fine-tuning keeps the pretrained statistics and the memory a frozen norm saves)."""
    return "batch" if scheme == "full" else "frozen"


def stat_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every normalization layer of ``model`` that has running
    statistics or could (BatchNorm*, SyncBatchNorm, InstanceNorm*), in module order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase)]


def _tracks(module: nn.Module) -> bool:
    return getattr(module, "running_mean", None) is not None


def check_norms(model: nn.Module, norm_stats: str) -> None:
    """Raise if ``model`` cannot run in ``norm_stats``: a frozen plan needs every
    BatchNorm to hold running statistics."""
    if norm_stats != "frozen":
        return
    for name, m in stat_norms(model):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not _tracks(m):
            raise ValueError(
                f"layer {name or '(model)'!r} ({type(m).__name__}) has no running statistics "
                f"(track_running_stats=False), so a plan with norm_stats='frozen' cannot "
                f"freeze them; make the plan with norm_stats='batch' (odt.plan(model, scheme, "
                f"norm_stats='batch')) or build the layer with track_running_stats=True")


def set_norm_mode_(model: nn.Module, norm_stats: str) -> nn.Module:
    """Put ``model``'s norms with running statistics in eval mode ("frozen") or train
    mode ("batch"); every other module keeps its mode. Returns ``model``."""
    check_norms(model, check_norm_stats(norm_stats))
    for _, m in stat_norms(model):
        if _tracks(m):
            m.train(norm_stats == "batch")
    return model


@contextmanager
def norm_mode(model: nn.Module, norm_stats: str) -> Iterator[nn.Module]:
    """``set_norm_mode_`` inside the block; every module's own mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield set_norm_mode_(model, norm_stats)
    finally:
        for m, mode in modes:
            m.training = mode


def mismatched(model: nn.Module, norm_stats: str) -> tuple[str, nn.Module] | None:
    """The first norm with running statistics whose mode is not ``norm_stats``'s."""
    want = norm_stats == "batch"
    for name, m in stat_norms(model):
        if _tracks(m) and m.training != want:
            return name, m
    return None


def mode_error(name: str, module: nn.Module, scheme: str, norm_stats: str) -> ValueError:
    """What a lean model says when a norm runs in the other mode than its plan's."""
    have = "train mode (batch statistics)" if module.training else "eval mode (frozen statistics)"
    return ValueError(
        f"layer {name or '(model)'!r} ({type(module).__name__}) runs in {have}, but this "
        f"lean model was built for a {scheme!r} plan with norm_stats={norm_stats!r}; call "
        f"plan.norm_mode_(model) after model.train() (odt.train does it for you), or make "
        f"the plan with norm_stats={'batch' if norm_stats == 'frozen' else 'frozen'!r} "
        f"(valid choices: {', '.join(NORM_STATS)})")
