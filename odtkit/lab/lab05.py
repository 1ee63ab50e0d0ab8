"""Lab 05's experiments in one place: the settings, the runs, and the tables the lab prints.

``benchmarks/lab05.py`` runs them in full (30 epochs, 40 federated rounds) and writes
benchmarks/results/lab05.json; the notebook prints that file's tables, asserts its prose
against them and, in CI, re-runs the first epoch of every simulated run (and the first
federated rounds) with the same settings and checks the numbers against the file, so a
stale file fails. Both import the settings from here, so they cannot drift apart.

    full = load_lab05_results()                       # the committed full run
    live = run_lab(task, max_steps=steps_per_epoch(task), fleet_rounds=CHECK_ROUNDS)
    assert not lab05_differences(live, full)          # what live covers equals the file
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._results import benchmark_results
from .suites import SUITE, lab_model

__all__ = ["LAB05_EPOCHS", "LAB05_SEEDS", "LAB05_SEEDED", "LAB05_WORKERS", "LAB05_BATCH",
           "LAB05_DEVICE", "LAB05_LINKS", "DGC_ABLATION", "POWERSGD_RANKS", "FLEET",
           "FLEET_RUNS", "CHECK_ROUNDS", "steps_per_epoch", "run_lab", "lab05_differences",
           "load_lab05_results", "format_suite_table", "format_ablation_table",
           "format_rank_table", "format_fleet_table"]

LAB05_RESULTS = Path("benchmarks") / "results" / "lab05.json"
LAB05_EPOCHS = 30
LAB05_SEEDS = (0, 1, 2)
LAB05_SEEDED = ("dense fp32", "top-k 0.1% + EF")  # the runs repeated over every seed
LAB05_WORKERS, LAB05_BATCH = 4, 16  # 4 workers x 16 samples: a global batch of 64
LAB05_DEVICE = "raspberry-pi-4"  # what each worker computes on, for the time model
LAB05_LINKS = ("ble", "lte")
_DGC = {"compressor": "dgc", "density": 0.001, "optimizer": "sgd", "clip_norm": 1.0,
        "warmup_epochs": 4}
DGC_ABLATION: dict[str, dict[str, Any]] = {
    "DGC, all four": _DGC,
    "- local clipping": {**_DGC, "clip_norm": None},
    "- momentum correction": {**_DGC, "momentum_correction": False, "optimizer": "sgd-m"},
    "- momentum masking": {**_DGC, "momentum_masking": False},
    "- warm-up": {**_DGC, "warmup": False},
    "none (top-k + EF)": {**_DGC, "clip_norm": None, "momentum_correction": False,
                          "warmup": False, "optimizer": "sgd-m"},
}
POWERSGD_RANKS = (1, 2, 4, 8)
FLEET: dict[str, Any] = {
    "clients": 20, "fraction": 0.25, "rounds": 40, "local_epochs": 2, "lr": 0.1, "alpha": 0.5,
    "link": ("ble", "lte"), "seed": 0,
    "devices": ("stm32h743", "nrf52840", "raspberry-pi-4", "phone-snapdragon-7-gen-1")}
FLEET_RUNS: dict[str, dict[str, Any]] = {
    "wait for everyone": {},
    "deadline 1 s": {"deadline_s": 1.0},
    "top-k 1% + EF uplink": {"compressor": "topk", "density": 0.01, "error_feedback": True},
}
CHECK_ROUNDS = 3  # federated rounds re-run in CI
_ACC_TOL = 0.004  # two test samples of 539: another CPU may round one prediction otherwise
_WALL = ("wall_s",)  # wall-clock keys: never compared


def steps_per_epoch(task: Any) -> int:
    """Optimizer steps (rounds) in one epoch of the lab's runs: full global batches only."""
    return len(task.y_train) // (LAB05_WORKERS * LAB05_BATCH)


def _simulate(task: Any, settings: Mapping[str, Any], seed: int, max_steps: int | None) -> Any:
    from ..distributed import simulate

    return simulate(lab_model(task, seed=seed), task, workers=LAB05_WORKERS,
                    batch_size=LAB05_BATCH, epochs=LAB05_EPOCHS, seed=seed,
                    max_steps=max_steps, **settings)


def _dist_row(hist: Any, task: Any, settings: Mapping[str, Any], seed: int, per_epoch: int,
              wall_s: float, partial: bool) -> dict[str, Any]:
    """One simulated run as plain values: its first epoch always, the whole run unless
    ``partial`` (keys as in benchmarks/compress.json, so the figures read both)."""
    from ..distributed.federated import worker_round_time

    first = {"payload_bytes": hist.up_bytes_per_round[:per_epoch],
             "wire_sent_bytes": hist.wire_sent_bytes_per_round[:per_epoch],
             "wire_recv_bytes": hist.wire_recv_bytes_per_round[:per_epoch],
             "test_acc": hist.test_acc[0]}
    row: dict[str, Any] = {"settings": dict(settings), "seed": seed, "first_epoch": first,
                           "wall_s": wall_s}
    if partial:
        return {**row, "partial": True}
    rounds = hist.rounds
    times = {}
    for link in LAB05_LINKS:
        t = worker_round_time(hist, lab_model(task, seed=seed), device=LAB05_DEVICE,
                              link=link, batch_size=LAB05_BATCH)
        times[link] = {"compute_s": t.compute_s, "upload_s": t.upload_s,
                       "download_s": t.download_s, "total_s": t.total_s}
    return {**row, "rounds": rounds, "exchange": hist.exchange, "dense_bytes": hist.dense_bytes,
            "bytes_per_worker_per_round": sum(hist.up_bytes_per_round) / rounds,
            "wire_sent_per_worker_per_round": sum(hist.wire_sent_bytes_per_round) / rounds,
            "wire_recv_per_worker_per_round": sum(hist.wire_recv_bytes_per_round) / rounds,
            "dense_wire_bytes_per_round": hist.dense_wire_bytes,
            "compression_ratio": hist.compression_ratio, "wire_ratio": hist.wire_ratio,
            "final_acc": [hist.test_acc[-1]], "curve_seed0": list(hist.test_acc),
            "round_time_s": times}


def _run_dist(task: Any, settings: Mapping[str, Any], seed: int,
              max_steps: int | None) -> dict[str, Any]:
    per_epoch = steps_per_epoch(task)
    started = time.perf_counter()
    hist = _simulate(task, settings, seed, max_steps)
    partial = max_steps is not None and max_steps < per_epoch * LAB05_EPOCHS
    return _dist_row(hist, task, settings, seed, per_epoch, time.perf_counter() - started,
                     partial)


def _run_fleet(task: Any, settings: Mapping[str, Any], rounds: int) -> dict[str, Any]:
    from ..distributed.federated import federated
    from ..models import create

    small = create("mlp", input_shape=task.input_shape, num_classes=task.num_classes, seed=0)
    started = time.perf_counter()
    hist = federated(small, task, **{**FLEET, "rounds": rounds}, **settings)
    row = {"settings": dict(settings), **hist.as_dict(), "wall_s": time.perf_counter() - started}
    if rounds < FLEET["rounds"]:
        return {**row, "partial": True}
    return {**row, "total_time_s": hist.total_time_s, "up_bytes_total": sum(hist.up_bytes_per_round),
            "dropped_updates": sum(len(d) for d in hist.dropped), "model_bytes":
            hist.down_bytes_per_round[0] // len(hist.chosen[0])}


def run_lab(task: Any, *, max_steps: int | None = None, fleet_rounds: int | None = None,
            seeds: tuple[int, ...] = LAB05_SEEDS) -> dict[str, Any]:
    """Every run of lab 05: the suite (seed 0), the seeded runs over ``seeds``, the DGC
    ablation, the PowerSGD rank sweep and the federated fleet. ``max_steps`` /
    ``fleet_rounds`` cut the runs short (a partial row keeps only what the cut run can
    say: its first epoch, its first rounds)."""
    suite = {label: _run_dist(task, kw, 0, max_steps) for label, kw in SUITE.items()}
    seeded = {}
    for label in LAB05_SEEDED:
        rows = [suite[label]] + [_run_dist(task, SUITE[label], s, max_steps) for s in seeds[1:]]
        seeded[label] = {"seeds": list(seeds), "first_epoch_acc":
                         [r["first_epoch"]["test_acc"] for r in rows]}
        if max_steps is None:
            seeded[label]["final_acc"] = [r["final_acc"][0] for r in rows]
        if max_steps is not None or len(seeds) < len(LAB05_SEEDS):
            seeded[label]["partial"] = True  # compared with the file's first seeds
    ablation = {label: _run_dist(task, kw, 0, max_steps) for label, kw in DGC_ABLATION.items()}
    ranks = {r: _run_dist(task, {"compressor": "powersgd", "rank": r, "error_feedback": True},
                          0, max_steps) for r in POWERSGD_RANKS}
    fleet = {label: _run_fleet(task, kw, fleet_rounds or FLEET["rounds"])
             for label, kw in FLEET_RUNS.items()}
    return {"suite": suite, "seeds": seeded, "dgc_ablation": ablation, "powersgd": ranks,
            "federated": fleet}


def lab05_differences(live: Any, stored: Any, where: str = "", prefix: bool = False
                      ) -> list[str]:
    """Where ``live`` (``run_lab``'s output, maybe cut short) and ``stored`` (the file)
    disagree: every number live has, exact for bytes and modelled times, within two test
    samples for accuracies; the lists of a partial row are compared with the file's first
    entries. Wall-clock times are not compared."""
    if isinstance(live, Mapping):
        if not isinstance(stored, Mapping):
            return [f"{where}: the file has {stored!r}, the run a mapping"]
        prefix = prefix or live.get("partial") is True
        out = []
        for key, value in live.items():
            if key in _WALL or key == "partial":
                continue
            other = stored.get(key, stored.get(str(key), _MISSING))
            if other is _MISSING:
                out.append(f"{where}/{key}: not in the file")
            else:
                out += lab05_differences(value, other, f"{where}/{key}", prefix)
        return out
    if isinstance(live, (list, tuple)):
        stored = list(stored) if isinstance(stored, (list, tuple)) else [stored]
        if prefix:
            stored = stored[:len(live)]
        if len(live) != len(stored):
            return [f"{where}: {len(live)} entries, the file {len(stored)}"]
        return [d for i, (a, b) in enumerate(zip(live, stored, strict=True))
                for d in lab05_differences(a, b, f"{where}[{i}]", prefix)]
    if isinstance(live, (int, float)) and not isinstance(live, bool):
        tol = _ACC_TOL if "acc" in where else 1e-9 * max(1.0, abs(live))
        if (not isinstance(stored, (int, float)) or isinstance(stored, bool)
                or not math.isclose(live, stored, rel_tol=0, abs_tol=tol)):
            return [f"{where}: run {live!r}, file {stored!r}"]
        return []
    return [] if live == stored else [f"{where}: run {live!r}, file {stored!r}"]


_MISSING = object()


def format_suite_table(suite: Mapping[str, Any]) -> str:
    """The compressors side by side: bytes per worker and round (payload, wire sent and
    received; means over the run), the payload ratio, one round over each link, the final
    test accuracy and the collective."""
    lines = [f"{'':>18}  {'payload':>9}  {'wire sent':>9}  {'received':>9}  {'ratio':>6}  "
             + "  ".join(f"{link.upper():>7}" for link in LAB05_LINKS) + "  accuracy"]
    for label, row in suite.items():
        t = "  ".join(f"{row['round_time_s'][link]['total_s']:5.3f} s" for link in LAB05_LINKS)
        lines.append(f"{label:>18}: {row['bytes_per_worker_per_round']:>9,.0f}  "
                     f"{row['wire_sent_per_worker_per_round']:>9,.0f}  "
                     f"{row['wire_recv_per_worker_per_round']:>9,.0f}  "
                     f"{row['compression_ratio']:>5.1f}x  {t}  "
                     f"{100 * row['final_acc'][0]:5.1f}%  {row['exchange']}")
    return "\n".join(lines)


def format_ablation_table(ablation: Mapping[str, Any]) -> str:
    """The DGC ablation: whole-run compression ratio and final test accuracy per row."""
    return "\n".join(f"{label:>22}: {row['compression_ratio']:6.1f}x fewer bytes over the "
                     f"whole run, test accuracy {100 * row['final_acc'][0]:5.1f}%"
                     for label, row in ablation.items())


def format_rank_table(ranks: Mapping[int, Any]) -> str:
    """PowerSGD per rank: payload and wire bytes per round, ratio, final test accuracy."""
    return "\n".join(f"rank {r}: {row['bytes_per_worker_per_round']:>7,.0f} B payload, "
                     f"{row['wire_sent_per_worker_per_round']:>7,.0f} B wire sent, "
                     f"{row['compression_ratio']:5.1f}x, test accuracy "
                     f"{100 * row['final_acc'][0]:5.1f}%" for r, row in sorted(ranks.items()))


def format_fleet_table(fleet: Mapping[str, Any]) -> str:
    """The federated runs: simulated time, bytes up, dropped updates, final accuracy."""
    return "\n".join(f"{label:>21}: {row['total_time_s']:6.2f} s simulated, "
                     f"{row['up_bytes_total'] / 1e6:5.2f} MB up, {row['dropped_updates']} "
                     f"updates dropped, final test accuracy {100 * row['test_acc'][-1]:.1f}%"
                     for label, row in fleet.items())


def load_lab05_results(path: str | Path | None = None) -> dict[str, Any]:
    """benchmarks/results/lab05.json (the full run of benchmarks/lab05.py), found from the
    source tree or the working directory; PowerSGD's ranks as int keys again."""
    results = benchmark_results(LAB05_RESULTS, "benchmarks/lab05.py", path)
    results["powersgd"] = {int(r): row for r, row in results["powersgd"].items()}
    return results
