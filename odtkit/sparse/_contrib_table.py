"""The value objects of contribution analysis and their JSON form (see contributions.py)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "odtkit-contributions"
REBUILD = "rebuild it with contributions(...) and save it again (the lab's table: python " \
          "data/build_contributions.py)"


class TableMismatchError(ValueError):
    """A ContributionTable made for another model, task, version or setting."""


@dataclass(frozen=True)
class Contribution:
    """One short fine-tuning run of contribution analysis: the biases of the last ``k``
    layers (``kind="biases"``) or the weights of ``layer`` at channel ratio ``ratio``
    (``kind="weights"``); its final test accuracy, its gain over the table's baseline, and
    the training memory of that update alone (``odt.estimate`` peak and frozen weights)."""

    kind: str
    acc: float
    gain: float
    peak_bytes: int
    frozen_weight_bytes: int
    k: int = 0
    layer: str = ""
    ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("biases", "weights"):
            raise ValueError(f"Contribution.kind must be 'biases' or 'weights', got "
                             f"{self.kind!r}")
        for name in ("peak_bytes", "frozen_weight_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Contribution.{name} must be an int >= 0, got {value!r}")
        if self.kind == "biases" and self.k < 1:
            raise ValueError(f"a biases contribution needs k >= 1, got k={self.k!r}")
        if self.kind == "weights" and not (self.layer and 0 < self.ratio <= 1):
            raise ValueError(f"a weights contribution needs a layer and a ratio in (0, 1], "
                             f"got layer={self.layer!r}, ratio={self.ratio!r}")

    @property
    def label(self) -> str:
        """'biases of the last 3 layers' or 'blocks.7.block.2.0 weights at 1/4'."""
        if self.kind == "biases":
            return f"biases of the last {self.k} layers"
        return f"{self.layer} weights at {_ratio_text(self.ratio)}"


def _ratio_text(ratio: float) -> str:
    inverse = 1 / ratio
    return "1" if ratio == 1 else (f"1/{inverse:g}" if inverse.is_integer() else f"{ratio:g}")


@dataclass(frozen=True)
class ContributionTable:
    """Accuracy gains of sparse-update options and the training memory each one needs.

    ``baseline_acc``: test accuracy of the model as given, with no update; every ``gain``
    is a run's final test accuracy minus it. ``none_peak_bytes`` /
    ``none_frozen_weight_bytes``: ``odt.estimate`` of the plan "none" (inference alone).
    ``settings``: how the runs and estimates were made (epochs, lr, seed, optimizer,
    engine, precision, batch sizes, criterion, ratios, layers); ``model_fingerprint``
    identifies the weights (SHA-256 of the state dict). The search adds gains up, as the
    paper does: a model of accuracy, not a measurement of the combined update.
    """

    model: str
    model_fingerprint: str
    task: str
    version: str
    settings: tuple[tuple[str, Any], ...]
    baseline_acc: float
    none_peak_bytes: int
    none_frozen_weight_bytes: int
    bias_layers: tuple[str, ...]
    biases: tuple[Contribution, ...]
    weights: tuple[Contribution, ...]
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not all(c.kind == "biases" for c in self.biases):
            raise ValueError("ContributionTable.biases holds 'biases' contributions only")
        if not all(c.kind == "weights" for c in self.weights):
            raise ValueError("ContributionTable.weights holds 'weights' contributions only")
        ks = [c.k for c in self.biases]
        if len(set(ks)) != len(ks) or any(k > len(self.bias_layers) for k in ks):
            raise ValueError(f"bias contributions need distinct k in [1, "
                             f"{len(self.bias_layers)}], got {ks}")
        keys = [(c.layer, c.ratio) for c in self.weights]
        if len(set(keys)) != len(keys):
            raise ValueError("ContributionTable.weights has a (layer, ratio) twice")
        if not math.isfinite(self.baseline_acc):
            raise ValueError(f"baseline_acc must be finite, got {self.baseline_acc!r}")

    # ------------------------------------------------------------------ lookups
    @property
    def settings_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    @property
    def layers(self) -> tuple[str, ...]:
        """Layers whose weights were analysed, in model order."""
        return tuple(dict.fromkeys(c.layer for c in self.weights))

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(sorted({c.ratio for c in self.weights}))

    @property
    def bias_ks(self) -> tuple[int, ...]:
        return tuple(sorted(c.k for c in self.biases))

    def bias(self, k: int) -> Contribution | None:
        """The contribution of the last ``k`` biases (None for k = 0)."""
        for c in self.biases:
            if c.k == k:
                return c
        if k == 0:
            return None
        raise KeyError(f"no biases contribution for k={k}; measured: {list(self.bias_ks)}")

    def weight(self, layer: str, ratio: float) -> Contribution:
        for c in self.weights:
            if c.layer == layer and math.isclose(c.ratio, ratio):
                return c
        raise KeyError(f"no weights contribution for ({layer!r}, {ratio!r}); layers: "
                       f"{list(self.layers)}, ratios: {list(self.ratios)}")

    def predicted_gain(self, biases: int, weights: Mapping[str, float]) -> float:
        """The summed gain of a scheme: biases of the last ``biases`` layers plus each
        ``{layer: ratio}`` of ``weights``."""
        entry = self.bias(biases)
        gain = 0.0 if entry is None else entry.gain
        return gain + sum(self.weight(layer, r).gain for layer, r in weights.items())

    # ---------------------------------------------------------------- checking
    def check(self, *, model: str | None = None, model_fingerprint: str | None = None,
              task: str | None = None, version: str | None = None,
              **settings: Any) -> ContributionTable:
        """This table, if it was made for what is given; else a TableMismatchError that
        names every difference."""
        wrong = []
        for name, want in (("model", model), ("model_fingerprint", model_fingerprint),
                           ("task", task), ("version", version)):
            if want is not None and getattr(self, name) != want:
                wrong.append(f"{name} is {getattr(self, name)!r}, not {want!r}")
        have = self.settings_dict
        for name, want in settings.items():
            if want is not None and _plain(have.get(name)) != _plain(want):
                wrong.append(f"{name} is {have.get(name)!r}, not {want!r}")
        if wrong:
            raise TableMismatchError(
                f"this contribution table (model {self.model!r}, task {self.task!r}) was made "
                f"for another setting: {'; '.join(wrong)}. Use a table made for this setting "
                f"or {REBUILD}")
        return self

    # ---------------------------------------------------------------------- JSON
    def as_dict(self) -> dict[str, Any]:
        def row(c: Contribution) -> dict[str, Any]:
            keep = ("k",) if c.kind == "biases" else ("layer", "ratio")
            out = {name: getattr(c, name) for name in keep}
            out.update(acc=c.acc, gain=c.gain, peak_bytes=c.peak_bytes,
                       frozen_weight_bytes=c.frozen_weight_bytes)
            return out

        return {"format": FORMAT, "version": self.version, "model": self.model,
                "model_fingerprint": self.model_fingerprint, "task": self.task,
                "settings": _plain(self.settings_dict), "baseline_acc": self.baseline_acc,
                "none": {"peak_bytes": self.none_peak_bytes,
                         "frozen_weight_bytes": self.none_frozen_weight_bytes},
                "bias_layers": list(self.bias_layers), "notes": list(self.notes),
                "biases": [row(c) for c in self.biases],
                "weights": [row(c) for c in self.weights]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContributionTable:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError(f"not a contribution table (no \"format\": {FORMAT!r} field)")
        try:
            return cls(
                model=data["model"], model_fingerprint=data["model_fingerprint"],
                task=data["task"], version=data["version"],
                settings=tuple((k, _frozen(v)) for k, v in data["settings"].items()),
                baseline_acc=float(data["baseline_acc"]),
                none_peak_bytes=int(data["none"]["peak_bytes"]),
                none_frozen_weight_bytes=int(data["none"]["frozen_weight_bytes"]),
                bias_layers=tuple(data["bias_layers"]), notes=tuple(data.get("notes", ())),
                biases=tuple(Contribution(kind="biases", **r) for r in data["biases"]),
                weights=tuple(Contribution(kind="weights", **r) for r in data["weights"]))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed contribution table: {err!r}; {REBUILD}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as JSON (atomically: a sibling temp file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], **expect: Any) -> ContributionTable:
        """Read a table saved by :meth:`save`; ``expect`` (model, model_fingerprint, task,
        version and any setting) is checked as :meth:`check` does."""
        table = cls.from_dict(json.loads(Path(path).read_text()))
        return table.check(**expect) if expect else table


def _plain(value: Any) -> Any:
    """JSON-shaped copy: tuples become lists, mappings dicts (for comparing settings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return value
    return value


def _frozen(value: Any) -> Any:
    """Lists become tuples, so a loaded table stays hashable and equal to a built one."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value
