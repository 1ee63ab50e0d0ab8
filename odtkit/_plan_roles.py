"""Which parameters a scheme name trains, chosen by each parameter's role in the model.

- A *bias vector* is any parameter whose own name is ``bias`` or starts with ``bias_`` or
  ends with ``_bias``: conv, linear and norm biases, an RNN's ``bias_ih_l0`` /
  ``bias_hh_l0``, attention's ``in_proj_bias`` (and ``bias_k`` / ``bias_v``).
- A *layer* is what a user would call one: a module that registers parameters itself
  (a conv, a linear, a BatchNorm), except that each layer of a multi-layer ``nn.LSTM`` /
  ``nn.GRU`` / ``nn.RNN`` (both directions together) is a layer of its own, and a
  transformer block (a module, not the model itself, with an attention among its direct
  children: ``nn.TransformerEncoderLayer``, a ViT block) is one layer with everything
  inside it. Layers come in registration order, which is the forward order for the zoo.
For plain conv nets and MLPs both are exactly "named ``bias``" and "a module with its own
parameters".
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from ._checks import closest, lookup

__all__ = ["layers", "is_bias", "scheme_trainable", "SCHEME_RULES", "SCHEMES"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_LAST = re.compile(r"^\s*last\s*[:=]\s*(.*)$", re.IGNORECASE)
_RNN_LAYER = re.compile(r"_l(\d+)(_reverse)?$")


def is_bias(name: str) -> bool:
    """True for a bias vector's parameter name (see the module notes)."""
    own = name.rsplit(".", 1)[-1]
    return own == "bias" or own.startswith("bias_") or own.endswith("_bias")


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith(
        "Attention")


def _blocks(model: nn.Module) -> list[str]:
    """Names of the outermost transformer blocks: modules (not the model) with an
    attention among their direct children."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or _is_attention(module) or any(name.startswith(b + ".") for b in found):
            continue
        if any(_is_attention(child) for child in module.children()):
            found.append(name)
    return found


def layers(model: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """(layer name, its parameter names) for every layer of ``model`` (module notes).

    In registration order; a parameter shared by several modules counts for the first.
    A recurrent layer is named ``"<module> (layer k)"``.
    """
    canonical = {id(p): n for n, p in model.named_parameters()}
    blocks = _blocks(model)
    out, seen = [], set()
    for mod_name, module in model.named_modules():
        if any(mod_name.startswith(b + ".") for b in blocks):
            continue  # inside a block: counted with it
        own = []
        for p in module.parameters(recurse=mod_name in blocks):
            if id(p) in canonical and id(p) not in seen:
                seen.add(id(p))
                own.append(canonical[id(p)])
        if not own:
            continue
        if isinstance(module, nn.RNNBase) and mod_name not in blocks:
            by_layer: dict[int, list[str]] = {}
            for name in own:
                match = _RNN_LAYER.search(name)
                by_layer.setdefault(int(match.group(1)) if match else 0, []).append(name)
            out += [(f"{mod_name} (layer {k})", tuple(names))
                    for k, names in sorted(by_layer.items())]
        else:
            out.append((mod_name, tuple(own)))
    return out


def _norm_only(model: nn.Module, named: dict[str, nn.Parameter]) -> set[str]:
    out = set()
    for mod_name, m in model.named_modules():
        if isinstance(m, NORM_TYPES):
            for p_name, _ in m.named_parameters(recurse=False):
                out.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return out & set(named)


# scheme name -> the names it trains, given the model and its named parameters; looked up
# with case and separators ignored ('Bias Only' is 'bias-only'); "last:K" is parsed apart
SCHEME_RULES: dict[str, Callable[[nn.Module, dict[str, nn.Parameter]], set[str]] | None] = {
    "full": lambda model, named: set(named),
    "none": lambda model, named: set(),
    "bias-only": lambda model, named: {n for n in named if is_bias(n)},
    "last:K": None,
    "norm-only": _norm_only,
}
SCHEMES = tuple(SCHEME_RULES)


def _last_k(model: nn.Module, scheme: str, k_text: str) -> tuple[str, set[str]]:
    try:
        k = int(k_text)
    except ValueError:
        raise ValueError(f"in scheme {scheme!r}, K must be a positive integer "
                         f"(e.g. 'last:2'), got {k_text!r}") from None
    if k < 1:
        raise ValueError(f"in scheme {scheme!r}, K must be at least 1, got {k}; "
                         "use 'none' to train nothing")
    found = layers(model)
    if k > len(found):
        raise ValueError(f"scheme {scheme!r} asks for the last {k} layers, but "
                         f"{type(model).__name__} has only {len(found)} layers with "
                         f"parameters; use K <= {len(found)} or 'full'")
    return f"last:{k}", {n for _, names in found[-k:] for n in names}


def scheme_trainable(model: nn.Module, scheme: str) -> tuple[str, set[str]]:
    """(canonical scheme name, trainable names) for a scheme given as a string."""
    named = dict(model.named_parameters())
    match = _LAST.match(scheme)
    if match:
        return _last_k(model, scheme, match.group(1).strip())
    try:
        key = lookup("scheme", scheme, SCHEME_RULES)
    except ValueError as err:
        if scheme in named or closest(scheme, named, n=1):
            raise ValueError(f"{err} To train named parameters pass a list, e.g. "
                             f"odt.plan(model, [{scheme!r}]).") from None
        raise
    rule = SCHEME_RULES[key]
    if rule is None:  # 'last-k' or 'lastK': the number of layers is missing
        raise ValueError(f"scheme {scheme!r} needs the number of layers: write 'last:K' with "
                         "K a positive integer, e.g. 'last:2'")
    return key, rule(model, named)
