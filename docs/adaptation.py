"""Redraw docs/adaptation.png, the README's picture: lab 00's adaptation in its full run.

mcunet-tiny, pretrained on the source half of digits-shift, adapts to the target half with
three plans (the last layer, every bias, everything), 10 epochs each, as lab 00 does when
run by hand (ODTKIT_SMOKE=0). Deterministic: one thread, fixed seeds.

    python docs/adaptation.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

import odtkit as odt  # noqa: E402

OUT = Path(__file__).with_name("adaptation.png")


def main() -> None:
    torch.set_num_threads(1)
    task = odt.datasets.load("digits-shift")
    before = odt.evaluate(odt.models.create("mcunet-tiny", pretrained=True), task.x_test,
                          task.y_test)
    history = {}
    for scheme in ("last:1", "bias-only", "full"):
        model = odt.models.create("mcunet-tiny", pretrained=True)
        history[scheme] = odt.train(model, task, odt.plan(model, scheme), epochs=10, lr=0.05,
                                    seed=0, progress=False)
        print(f"{scheme:>9}: {before:.1%} -> {history[scheme].test_acc[-1]:.1%}")
    fig = odt.viz.accuracy_curves(history)
    fig.axes[0].axhline(before, color="gray", linestyle="--", label="before adaptation")
    fig.axes[0].legend()
    fig.savefig(OUT, dpi=100, bbox_inches="tight")
    print(f"wrote {OUT.name}")


if __name__ == "__main__":
    main()
