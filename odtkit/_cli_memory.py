"""What ``odtkit models``, ``odtkit estimate`` and ``odtkit lab`` print or start."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ._checks import check_int, lookup


def models_rows() -> tuple[list[str], list[list[str]]]:
    """(headers, rows): every zoo model with its input shape, parameters (10 classes) and
    whether pretrained weights ship with odtkit."""
    from . import models

    rows = []
    for name in models.names():
        model = models.create(name)
        shape = tuple(models.example_input(model).shape[1:])
        params = sum(p.numel() for p in model.parameters())
        rows.append([name, "x".join(map(str, shape)), f"{params:,}",
                     "yes" if models.pretrained_path(name).is_file() else "-"])
    return ["name", "input", "parameters", "pretrained"], rows


def add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``odtkit estimate`` (choices checked by odtkit's own lookups, which
    forgive case and name the closest choices)."""
    parser.add_argument("--model", required=True, help="a zoo model (see `odtkit models`)")
    parser.add_argument("--scheme", default="full",
                        help="what trains: full, none, bias-only, norm-only, last:K (default full)")
    parser.add_argument("--batch", default="1", help="batch size (default 1)")
    parser.add_argument("--precision", default="fp32",
                        help="fp32, bf16, fp16, fp8-e4m3, fp8-e5m2 (default fp32)")
    parser.add_argument("--optimizer", default="sgd", help="sgd, sgd-m or adam (default sgd)")
    parser.add_argument("--engine", default="pytorch", help="pytorch or lean (default pytorch)")
    parser.add_argument("--device", default=None,
                        help="a catalogue device to check the plan against (see `odtkit devices`)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: every category, both peaks, the fit if --device")


def estimate_report(args: argparse.Namespace) -> tuple[Any, Any]:
    """(MemoryReport, FitReport or None) for the parsed ``odtkit estimate`` options."""
    from . import hardware, memory, models, plans
    from .quant.precision import PRECISIONS
    from .training.optim import OPTIMIZERS

    try:
        batch = int(args.batch)
    except ValueError:
        raise ValueError(f"--batch must be a whole number >= 1, got {args.batch!r}; "
                         "e.g. --batch 8") from None
    check_int("--batch", batch, low=1)
    # names as forgiving as the library's catalogue and zoo: case and separators ignored
    optimizer = lookup("optimizer", args.optimizer, OPTIMIZERS)
    engine = lookup("engine", args.engine, memory.ENGINES)
    precision = lookup("precision", args.precision, PRECISIONS)
    model = models.create(args.model).train()
    plan = plans.plan(model, args.scheme, precision=precision)
    x = models.example_input(model, batch_size=batch)
    report = memory.estimate(model, x, plan, optimizer=optimizer, engine=engine)
    fit = None if args.device is None else hardware.device(args.device).fit(report)
    return report, fit


def report_json(report: Any, fit: Any, model: str) -> dict[str, Any]:
    """The JSON of ``odtkit estimate --json``: the report's numbers as they are."""
    out: dict[str, Any] = {
        "model": model, "scheme": report.scheme, "batch_size": report.batch_size,
        "precision": report.precision, "engine": report.engine, "optimizer": report.optimizer,
        "method": report.method, "by_category": dict(report.by_category),
        "total_bytes": report.total_bytes, "peak_bytes": report.peak_bytes,
        "allocator_peak_bytes": report.allocator_peak_bytes,
        "peak_components": dict(report.peak_components), "peak_at": report.peak_at,
        "frozen_weight_bytes": report.frozen_weight_bytes,
        "forward_macs": report.forward_macs, "backward_macs": report.backward_macs,
        "notes": list(report.notes)}
    if fit is not None:
        out["fit"] = {"device": fit.device, "fits": fit.fits, "memory": fit.memory,
                      "needed_bytes": fit.needed_bytes, "available_bytes": fit.available_bytes,
                      "headroom_bytes": fit.headroom_bytes, "peak": fit.peak,
                      "peak_components": dict(fit.peak_components),
                      "peak_component": fit.peak_component, "step_time_s": fit.step_time_s}
    return out


def print_estimate(args: argparse.Namespace) -> None:
    report, fit = estimate_report(args)
    if args.json:
        print(json.dumps(report_json(report, fit, args.model), indent=1))
        return
    print(report.table(layers=False))
    if fit is not None:
        print(fit.verdict)


def labs_folder() -> Path:
    """The lab book: ``labs/`` of the source checkout odtkit runs from, or of the current
    folder; a FileNotFoundError that says where it looked otherwise."""
    places = [Path(__file__).resolve().parents[1] / "labs", Path.cwd() / "labs"]
    for place in places:
        if any(place.glob("*.ipynb")):
            return place
    raise FileNotFoundError(
        f"no lab book found in {places[0]} or {places[1]}; run `odtkit lab` from a clone of "
        "odtkit (the labs/ folder holds the notebooks)")


def lab_command() -> list[str]:
    """The command that opens the lab book in JupyterLab (refuses, naming the fix, when
    JupyterLab is not installed)."""
    jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or \
        shutil.which("jupyter")
    if jupyter is None:
        raise FileNotFoundError("JupyterLab is not installed in this environment; run "
                                "`make lab` in the odtkit clone, or pip install jupyterlab")
    root_flags = ["--allow-root"] if hasattr(os, "getuid") and os.getuid() == 0 else []
    return [jupyter, "lab", f"--ServerApp.root_dir={labs_folder()}", *root_flags]
