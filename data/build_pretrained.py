"""Build the small source-pretrained checkpoints shipped in odtkit/models/pretrained/.

Each zoo model listed below is trained on the *source* domain of the
``digits-shift`` task (odt.datasets.load("digits-shift").source), so that the
labs can adapt it on the shifted target domain, as a device would in the field.
Deterministic: fixed seeds and one thread, so a rebuild gives the same numbers.
Set ODTKIT_PRETRAINED_DIR to write them elsewhere.

    python data/build_pretrained.py            # all models
    python data/build_pretrained.py mbv2-tiny  # one model
"""

from __future__ import annotations

import argparse
import json

import torch

import odtkit as odt

# model -> training recipe on the source domain
RECIPES: dict[str, dict] = {
    "mcunet-tiny": {"epochs": 30, "lr": 0.05, "optimizer": "sgd-m", "batch_size": 32},
    "mbv2-tiny": {"epochs": 30, "lr": 0.05, "optimizer": "sgd-m", "batch_size": 32},
    "mlp": {"epochs": 30, "lr": 0.05, "optimizer": "sgd-m", "batch_size": 32},
}
SOURCE_TASK = "digits-shift"


def build(name: str, seed: int = 0) -> dict:
    """Train ``name`` on the source domain, save it, and return a summary of the run."""
    torch.set_num_threads(1)
    task = odt.datasets.load(SOURCE_TASK)
    source = task.source
    model = odt.models.create(name, num_classes=source.num_classes,
                              input_shape=source.input_shape, seed=seed)
    recipe = RECIPES[name]
    history = odt.train(model, source, seed=seed, progress=False, **recipe)
    model.eval()
    target_acc = odt.training.evaluate(model, task.x_test, task.y_test)
    path = odt.models.pretrained_path(name)
    odt.models.save_pretrained(
        model, path, source_task=f"{SOURCE_TASK}/source",
        source_test_acc=float(history.test_acc[-1]), recipe=json.dumps(recipe), seed=seed)
    return {"model": name, "path": str(path.name), "source_test_acc": history.test_acc[-1],
            "target_test_acc_before_adaptation": target_acc,
            "parameters": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(RECIPES),
                        help=f"models to build (default: {' '.join(RECIPES)})")
    args = parser.parse_args(argv)
    for name in args.models:
        if name not in RECIPES:
            parser.error(f"no recipe for {name!r}; known: {', '.join(RECIPES)}")
        print(json.dumps(build(name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
