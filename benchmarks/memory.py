"""The analytic memory estimate against a measured training step, over the whole zoo.

For each zoo model x scheme (full, last:2, bias-only, norm-only) x engine (pytorch, lean):
estimated and measured bytes per category and their relative errors, peak estimated and
measured, the lean/stock activation ratio, and the median time of one odt.estimate call
(the trace cached, as in a notebook) and of a first, uncached one. BatchNorm runs with
frozen statistics (eval mode, as in fine-tuning) and, without --quick, also with batch
statistics. Prints JSON; a full run (not --quick) also writes benchmarks/results/memory.json.

Section "architectures": the models researchers bring (tests/archs.py: MobileNetV3-,
EfficientNet-, ResNet-18-, MobileNetV2-like nets, a ViT, an nn.TransformerEncoder, LSTM
and GRU classifiers) with full, bias-only and last:2 plans on both engines: per category
estimate, measure and relative error, the tensor peak and the allocator peak (kernel
scratch included; measured from torch.profiler's memory events) estimated and measured.
Where benchmarks/lean.py exists, its results are added under "lean".

    python benchmarks/memory.py                   # batch 8, default resolutions
    python benchmarks/memory.py --quick           # batch 2, small inputs, one optimizer
    python benchmarks/memory.py --batch-size 16
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "memory.json"
ARCH_SCHEMES = ("full", "bias-only", "last:2")
SCHEMES = ("full", "last:2", "bias-only", "norm-only")
SMALL = {"mcunet-tiny": (3, 16, 16), "mbv2-tiny": (3, 16, 16), "ds-cnn": (10, 25),
         "resnet8": (3, 16, 16), "mlp": (1, 8, 8)}


def timed_estimates(odt: Any, model: Any, x: torch.Tensor, plan: Any, repeats: int
                    ) -> tuple[float, float]:
    """Median seconds of an odt.estimate call with the model's trace cached (as when a
    widget moves a slider), and of one that traces the model first."""
    from odtkit.memory._trace import _CACHE

    cached, uncached = [], []
    for _ in range(repeats):
        _CACHE.pop(model, None)
        start = time.perf_counter()
        odt.estimate(model, x, plan, engine="lean")
        uncached.append(time.perf_counter() - start)
        start = time.perf_counter()
        odt.estimate(model, x, plan, engine="lean")
        cached.append(time.perf_counter() - start)
    return statistics.median(cached), statistics.median(uncached)


def _relative(a: int, b: int) -> float:
    return 0.0 if a == b else (a - b) / b if b else float("inf")


def architectures(odt: Any, batch_size: int, engines: tuple[str, ...]) -> dict[str, Any]:
    """Estimate beside measure on tests/archs.py's architectures (SGD with momentum)."""
    from odtkit.memory import CATEGORIES, compare

    sys.path.insert(0, str(HERE.parent / "tests"))
    from archs import ARCHS, build, example

    keys = (*CATEGORIES, "peak", "allocator_peak")
    rows, worst = [], {e: dict.fromkeys(keys, 0.0) for e in engines}
    for name in ARCHS:
        model, x = build(name), example(name, batch_size)
        for scheme in ARCH_SCHEMES:
            for engine in engines:
                try:
                    est = odt.estimate(model, x, scheme, optimizer="sgd-m", engine=engine)
                    meas = odt.measure(model, x, scheme, optimizer="sgd-m", engine=engine,
                                       rss=False)
                except Exception as err:  # noqa: BLE001 - recorded, the table goes on
                    rows.append({"model": name, "scheme": scheme, "engine": engine,
                                 "error": f"{type(err).__name__}: {err}"})
                    continue
                errors = compare(est, meas)
                errors["allocator_peak"] = _relative(est.allocator_peak_bytes,
                                                     meas.allocator_peak_bytes)
                for key, value in errors.items():
                    worst[engine][key] = max(worst[engine][key], abs(value))
                rows.append({
                    "model": name, "scheme": scheme, "engine": engine,
                    "estimated": est.by_category, "measured": meas.by_category,
                    "peak_estimated": est.peak_bytes, "peak_measured": meas.peak_bytes,
                    "allocator_peak_estimated": est.allocator_peak_bytes,
                    "allocator_peak_measured": meas.allocator_peak_bytes,
                    "relative_error": errors})
    targets = {}
    for e in engines:
        w = worst[e]
        targets.update({
            f"{e}_every_case_estimated": all("error" not in r for r in rows if r["engine"] == e),
            f"{e}_categories_within_2_percent": all(w[c] <= 0.02 for c in CATEGORIES),
            f"{e}_tensor_peak_within_2_percent": w["peak"] <= 0.02,
            f"{e}_allocator_peak_within_10_percent": w["allocator_peak"] <= 0.10})
    return {"batch_size": batch_size, "schemes": ARCH_SCHEMES, "optimizer": "sgd-m",
            "targets": targets, "worst_relative_error": worst, "cases": rows}


def lean_section() -> Any:
    """benchmarks/lean.py's results, where that benchmark exists (None otherwise)."""
    if not (HERE / "lean.py").exists():
        return None
    sys.path.insert(0, str(HERE))
    module = importlib.import_module("lean")
    for name in ("results", "run"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn()
    return None


def run(batch_size: int, quick: bool) -> dict[str, Any]:
    import odtkit as odt
    from odtkit.memory import CATEGORIES, ENGINES, compare

    torch.set_num_threads(1)
    optimizers = ("sgd-m",) if quick else ("sgd", "sgd-m", "adam")
    modes = (False,) if quick else (False, True)
    rows, timings, ratios = [], {}, {}
    worst = dict.fromkeys((*CATEGORIES, "peak"), 0.0)
    for name in odt.models.names():
        for train in modes:
            model = odt.models.create(name, input_shape=SMALL[name] if quick else None)
            model.train(train)
            x = odt.models.example_input(model, batch_size=batch_size)
            mode = "batch statistics" if train else "frozen statistics"
            for scheme in SCHEMES:
                plan = odt.plan(model, scheme)
                saved = {}
                for engine in ENGINES:
                    for optimizer in optimizers:
                        est = odt.estimate(model, x, plan, optimizer=optimizer, engine=engine)
                        meas = odt.measure(model, x, plan, optimizer=optimizer, engine=engine,
                                           rss=False)
                        errors = compare(est, meas)
                        for key, value in errors.items():
                            worst[key] = max(worst[key], abs(value))
                        saved[engine] = meas.by_category["activations"]
                        rows.append({
                            "model": name, "bn": mode, "scheme": scheme, "engine": engine,
                            "optimizer": optimizer, "estimated": est.by_category,
                            "measured": meas.by_category, "peak_estimated": est.peak_bytes,
                            "peak_measured": meas.peak_bytes, "relative_error": errors})
                # None where the lean engine keeps nothing at all (nothing to divide by)
                ratios[f"{name} {scheme} ({mode})"] = (
                    saved["pytorch"] / saved["lean"] if saved["lean"] else None)
            if not train:
                median_s, first_s = timed_estimates(odt, model, x, odt.plan(model, "bias-only"),
                                                    repeats=5 if quick else 21)
                timings[name] = {"median_s": median_s, "median_uncached_s": first_s}
    mbv2_ratio = ratios.get("mbv2-tiny bias-only (frozen statistics)")
    targets = {  # the memory issue's must-show figures, checked on this run's numbers
        "categories_within_2_percent": all(worst[c] <= 0.02 for c in CATEGORIES),
        "peaks_within_10_percent": worst["peak"] <= 0.10,
        "lean_bias_only_mbv2_at_least_10x": bool(mbv2_ratio and mbv2_ratio >= 10),
        "estimate_mbv2_median_at_most_50_ms": timings["mbv2-tiny"]["median_s"] <= 0.050,
    }
    arch = architectures(odt, batch_size, ENGINES)
    targets.update({f"architectures_{k}": v for k, v in arch["targets"].items()})
    return {"batch_size": batch_size, "quick": quick, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "targets": targets, "worst_relative_error": worst,
            "lean_over_stock_activation_ratio": ratios, "estimate_time": timings,
            "cases": rows, "architectures": arch, "lean": None if quick else lean_section()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size (default 8, or 2 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small inputs, one optimizer, frozen statistics only")
    args = parser.parse_args()
    batch = args.batch_size if args.batch_size is not None else (2 if args.quick else 8)
    if batch < 1:
        parser.error(f"--batch-size must be >= 1, got {batch}")
    result = run(batch, args.quick)
    text = json.dumps(result, indent=1)
    if not args.quick:  # a smoke run must not overwrite the reference numbers
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
    print(text)
    missed = [name for name, ok in result["targets"].items() if not ok]
    if missed:
        raise SystemExit(f"targets missed: {', '.join(missed)}")


if __name__ == "__main__":
    main()
