"""The lean engine beyond ReLU: activation bytes, step time and MobileTL's accuracy cost.

1. Bias-only plans with frozen BatchNorm statistics at batch 8, measured (odt.measure,
   autograd's saved-tensor hooks): stock activation bytes over lean ones on the
   ResNet-18-, MobileNetV2-, MobileNetV3- and EfficientNet-like nets of tests/archs.py,
   exact gradients and MobileTL's sign step, with the layers that keep the most bytes and
   why (the lean report's notes), and the lean estimate's error against the measurement.
2. Step time (forward, cross-entropy, backward) of a lean model over the stock one, bias-
   only, at batch 1 and 8, on the zoo's mbv2-tiny and the ResNet-18-like net: stock and
   lean steps alternate in one process (one thread), the ratio of their medians, by the
   wall clock and by the thread's CPU time (on a shared machine the wall clock also
   counts waiting for a core), over 200 rounds, and per block of 50 rounds. The lean
   model runs the compiled ops (``odtkit native``) and, alternating with them, the Python
   ops (``python_ops_*``) they stand in for.
3. MobileTL's accuracy effect on a transfer task: a MobileNetV3-like net (in-place
   hardswish, squeeze-excitation) pretrained on digits-shift's source domain, then
   fine-tuned bias-only on the target domain with exact and with MobileTL gradients
   through the lean engine, 3 seeds each, test accuracy after the last epoch.

    python benchmarks/lean.py            # prints JSON, writes benchmarks/results/lean.json

``lean_section()`` runs it and returns the JSON-able dict; ``results()`` returns the
committed results (benchmarks/memory.py includes them).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "lean.json"
RATIO_NETS = ("resnet18", "mobilenet_v2", "mobilenet_v3", "efficientnet")
SPEED_NETS = ("zoo:mbv2-tiny", "resnet18")
SEEDS = (0, 1, 2)


def _archs() -> Any:
    sys.path.insert(0, str(HERE.parent / "tests"))
    import archs

    return archs


def _build(name: str, batch_size: int) -> tuple[nn.Module, torch.Tensor]:
    import odtkit as odt

    if name.startswith("zoo:"):
        model = odt.models.create(name[4:])
        return model, odt.models.example_input(model, batch_size=batch_size)
    archs = _archs()
    return archs.build(name), archs.example(name, batch_size)


# ---------------------------------------------------------------- 1. bytes


def ratios(batch_size: int = 8) -> dict[str, Any]:
    """Stock over lean activation bytes, bias-only with frozen BN, both activation modes."""
    import odtkit as odt
    from odtkit.memory import compare
    from odtkit.memory._rules_lean import lean_limits

    out: dict[str, Any] = {}
    for name in RATIO_NETS:
        model, x = _build(name, batch_size)
        row: dict[str, Any] = {}
        for mode in ("exact", "mobiletl"):
            plan = odt.plan(model, "bias-only").with_activation_grad(mode)
            stock = odt.measure(model, x, plan, engine="pytorch", rss=False)
            lean = odt.measure(model, x, plan, engine="lean", rss=False)
            est = odt.estimate(model, x, plan, engine="lean")
            stock_bytes = stock.by_category["activations"]
            lean_bytes = lean.by_category["activations"]
            row[mode] = {
                "stock_activation_bytes": stock_bytes, "lean_activation_bytes": lean_bytes,
                "ratio": round(stock_bytes / lean_bytes, 2),
                "lean_estimate_error": {k: round(v, 4) for k, v in compare(est, lean).items()},
                "largest_kept": [{"layer": n, "type": t, "bytes": b, "why": why}
                                 for n, t, b, why in lean_limits(est.rows, plan)[:4]],
                "limits": [n for n in est.notes if n.startswith("lean stops")]}
        out[name] = row
    return out


# ---------------------------------------------------------------- 2. step time


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: list
          ) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) of one training step."""
    wall, cpu = time.perf_counter(), time.thread_time()
    F.cross_entropy(model(x), y).backward()
    for p in params:
        p.grad = None
    return time.perf_counter() - wall, time.thread_time() - cpu


def step_times(repeats: int = 200, blocks: int = 4) -> dict[str, Any]:
    """Median step time of lean over stock, bias-only (frozen BN), stock and lean steps
    alternating (the order rotating) after a warm-up: the lean model on the compiled ops
    (``odtkit native``) and, side by side, on the Python ops they stand in for. Beside the
    ratio of the medians over all ``repeats`` rounds, the ratio in each of ``blocks``
    consecutive blocks of rounds (``cpu_ratio_blocks``): the spread a shared machine gives."""
    import odtkit as odt
    from odtkit.engine import _layers, native

    sets = ["native", "python"] if native.available(build_missing=True) else ["python"]
    out: dict[str, Any] = {}
    for name in SPEED_NETS:
        for batch_size in (1, 8):
            model, x = _build(name, batch_size)
            plan = odt.plan(model, "bias-only")
            stock = plan.apply_(copy.deepcopy(model))
            plan.norm_mode_(stock)
            lean = odt.lean(model, plan)
            y = torch.arange(batch_size) % 10
            runs = [("stock", stock, None)] + [(ops, lean, ops) for ops in sets]
            params = {id(m): [p for p in m.parameters() if p.requires_grad] for m in (stock, lean)}
            times: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in runs}

            for i in range(-5, repeats):  # 5 warm-up rounds
                for k in range(len(runs)):
                    label, m, ops = runs[(i + k) % len(runs)]
                    if ops is not None:
                        _layers.use_ops(ops)
                    t = _step(m, x, y, params[id(m)])
                    if i >= 0:
                        times[label].append(t)
            _layers.use_ops(sets[0])
            row: dict[str, Any] = {"lean_ops": sets[0]}
            for j, clock in enumerate(("wall", "cpu")):
                s = statistics.median(t[j] for t in times["stock"])
                row[f"stock_{clock}_ms"] = round(s * 1e3, 3)
                for ops in sets:
                    le = statistics.median(t[j] for t in times[ops])
                    prefix = "" if ops == sets[0] else f"{ops}_ops_"
                    row[f"{prefix}lean_{clock}_ms"] = round(le * 1e3, 3)
                    row[f"{prefix}{clock}_ratio"] = round(le / s, 3)
            size = repeats // blocks
            row["cpu_ratio_blocks"] = [round(
                statistics.median(t[1] for t in times[sets[0]][b * size:(b + 1) * size])
                / statistics.median(t[1] for t in times["stock"][b * size:(b + 1) * size]), 3)
                for b in range(blocks)]
            out[f"{name.removeprefix('zoo:')}@{batch_size}"] = row
    return out


# ---------------------------------------------------------------- 3. MobileTL accuracy


class _Gray(nn.Module):
    """A 1-channel 8x8 digit as the 3-channel 32x32 image the MobileNetV3-like net takes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 8, 8)
        x = F.interpolate(x, scale_factor=4, mode="nearest")
        return self.net(x.expand(-1, 3, -1, -1))


def mobiletl_accuracy(pretrain_epochs: int = 12, epochs: int = 6) -> dict[str, Any]:
    """Test accuracy on digits-shift after bias-only fine-tuning, exact vs MobileTL."""
    import odtkit as odt

    task = odt.datasets.load("digits-shift")
    torch.manual_seed(0)
    base = _Gray(_archs().mobilenet_v3(task.num_classes))
    odt.train(base, task.source, "full", epochs=pretrain_epochs, lr=0.05, seed=0,
              progress=False)
    source_acc = _accuracy(base, task.source)
    before = _accuracy(base, task)
    out: dict[str, Any] = {"task": "digits-shift", "model": "mobilenet_v3-like (tests/archs.py)",
                           "pretrained_on": "digits-shift source domain",
                           "source_test_acc": round(source_acc, 4),
                           "target_test_acc_before": round(before, 4),
                           "plan": "bias-only (frozen BN)", "epochs": epochs, "seeds": SEEDS}
    for mode in ("exact", "mobiletl"):
        accs = []
        for seed in SEEDS:
            model = copy.deepcopy(base)
            plan = odt.plan(model, "bias-only").with_activation_grad(mode)
            hist = odt.train(model, task, plan, epochs=epochs, lr=0.05, seed=seed,
                             engine="lean", progress=False)
            accs.append(hist.test_acc[-1])
        out[mode] = {"test_acc": [round(a, 4) for a in accs],
                     "mean": round(statistics.mean(accs), 4)}
    out["mobiletl_minus_exact_points"] = round(100 * (out["mobiletl"]["mean"]
                                                      - out["exact"]["mean"]), 2)
    return out


def _accuracy(model: nn.Module, task: Any) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(task.x_test).argmax(1)
    return float((pred == task.y_test).float().mean())


# ---------------------------------------------------------------- the section


def lean_section() -> dict[str, Any]:
    """Run all three parts (one thread) and return the JSON-able results."""
    torch.set_num_threads(1)
    rat = ratios()
    times = step_times()
    acc = mobiletl_accuracy()
    targets = {
        "resnet18_bias_only_exact_at_least_20x": rat["resnet18"]["exact"]["ratio"] >= 20,
        "mobilenet_v2_bias_only_exact_at_least_100x": rat["mobilenet_v2"]["exact"]["ratio"] >= 100,
        "lean_estimates_within_2_percent": all(
            abs(e) <= 0.02 for r in rat.values() for m in r.values()
            for e in m["lean_estimate_error"].values()),
        "step_time_at_most_1.2x": {k: v["cpu_ratio"] <= 1.2 and v["wall_ratio"] <= 1.2
                                   for k, v in times.items()},
        "step_time_lean_ops": sorted({v["lean_ops"] for v in times.values()}),
    }
    return {"torch": torch.__version__, "threads": 1, "targets": targets,
            "activation_bytes_bias_only_batch_8": rat, "step_time_bias_only": times,
            "mobiletl_accuracy": acc}


def results() -> dict[str, Any] | None:
    """The committed results (what ``python benchmarks/lean.py`` last wrote), or None."""
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else None


if __name__ == "__main__":
    data = lean_section()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data, indent=1))
