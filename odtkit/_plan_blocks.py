"""Which modules a plan recomputes: the blocks ``recompute="blocks"`` finds, or the
modules named, checked against the model and put in the model's module order."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ._checks import choice_error


def _is_block(module: nn.Module) -> bool:
    compute = sum(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in module.modules())
    return not type(module).__module__.startswith("torch.") and compute >= 2


def find_blocks(model: nn.Module) -> tuple[str, ...]:
    """Names of the model's blocks, what ``recompute="blocks"`` checkpoints.

    A block is a submodule (not the model itself) of a class defined outside torch that
    holds at least two Conv/Linear layers, and the outermost such one on its path. A
    residual or inverted-residual block needs its own class (its ``forward`` adds the
    shortcut), while torch containers such as ``nn.Sequential`` are searched through.
    """
    found: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if _is_block(child):
                found.append(full)
            else:
                visit(full, child)

    visit("", model)
    return tuple(found)


def resolve_recompute(model: nn.Module, recompute: str | Iterable[str] | None
                       ) -> tuple[str, ...]:
    if recompute is None:
        return ()
    if isinstance(recompute, str) and recompute == "blocks":
        blocks = find_blocks(model)
        if not blocks:
            raise ValueError(
                f"recompute='blocks' found no blocks in {type(model).__name__} (a block is a "
                "submodule of a non-torch class with at least two Conv/Linear layers); "
                "name the modules to recompute, e.g. recompute=('features.1', 'features.2')")
        return blocks
    names = (recompute,) if isinstance(recompute, str) else tuple(recompute)
    modules = dict(model.named_modules())
    del modules[""]
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"recompute names must be strings, got {name!r}")
        if name == "":
            raise ValueError("cannot recompute the whole model; name its blocks instead")
        if name not in modules:
            raise choice_error("module to recompute", name, modules)
    if len(set(names)) != len(names):
        raise ValueError(f"recompute names a module twice: {names!r}")
    for a in names:
        for b in names:
            if b.startswith(a + "."):
                raise ValueError(f"recompute names {a!r} and its submodule {b!r}; "
                                 "name only one of them")
    order = {n: i for i, n in enumerate(modules)}
    return tuple(sorted(names, key=order.__getitem__))
