"""``train``: the loop of odtkit.training.core on one worker, with a plan, verified
checkpoints and exact resume.

Same seed and config -> the same History numbers and bit-identical weights, also when a
run is killed and resumed from its checkpoint (mid-epoch too, with ``checkpoint_every``).
Only torch RNGs drive the loop: one data permutation per epoch from a Generator seeded
by ``seed``, and the global torch RNG (seeded by ``seed`` too) for dropout.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_choice
from .._plan_norms import set_norm_mode_
from ..engine import lean
from ..plans import TrainPlan, as_plan
from ..plans import plan as make_plan
from ..quant import Int8Model
from .checkpoint import (
    check_fingerprint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import FIELDS, TrainConfig
from .core import Loop, LoopState
from .history import History
from .mixed import check_precision_model
from .probe import check_model, check_task

__all__ = ["train", "ENGINES"]

ENGINES = ("pytorch", "lean")  # stock autograd, or odt.lean's layers (same math, less kept)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _accepts_config(fn: Callable[..., History]) -> Callable[..., History]:
    """Let ``fn`` take ``config=TrainConfig(...)`` in place of its training keywords."""
    knobs = [name for name in inspect.signature(fn).parameters if name in FIELDS]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> History:
        config = kwargs.pop("config", None)
        if config is not None:
            if not isinstance(config, TrainConfig):
                raise TypeError(f"config must be an odt.TrainConfig, got "
                                f"{type(config).__name__}")
            both = [name for name in knobs if name in kwargs]
            if both:
                raise TypeError(f"{fn.__name__}() got {both[0]}= both in config and as a "
                                f"keyword; set it in one place, e.g. "
                                f"config=dataclasses.replace(config, {both[0]}=...)")
            kwargs.update({name: getattr(config, name) for name in knobs})
        return fn(*args, **kwargs)

    return wrapper


@_accepts_config
def train(
    model: nn.Module,
    task: Any,
    plan: TrainPlan | str | None = None,
    *,
    config: TrainConfig | None = None,
    epochs: int = 1,
    lr: float = 0.05,
    optimizer: str = "sgd-m",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 32,
    drop_last: bool = False,
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    progress: bool = True,
    loss_fn: LossFn | None = None,
    callbacks: Sequence[Callable[[History, nn.Module], None]] = (),
    max_steps: int | None = None,
    eval_batch_size: int = 256,
    precision: str | None = None,
    qas: bool = False,
    rounding: str = "nearest",
    engine: str = "pytorch",
) -> History:
    """Train ``model`` in place on ``task`` under ``plan`` and return its History.

    ``plan``: a TrainPlan or a scheme such as "bias-only" (``odt.plan(model, scheme)``);
    it sets which parameters train, and the modules it recomputes run checkpointed
    through the lean engine. ``config``: a TrainConfig instead of the keywords epochs
    ... eval_batch_size. ``checkpoint``: a file written atomically after every epoch (and
    every ``checkpoint_every`` steps); if it exists, training resumes from it and must
    match its fingerprint (config, task, model layout and module types, plan).
    ``callbacks`` run as ``cb(history, model)`` after each epoch. A NaN or infinite loss
    raises TrainingDiverged before that step's update; the checkpoint keeps the last
    good state. The model is left in train mode, its norms in the plan's mode.

    Norm statistics (``plan.norm_stats``): training steps run with the norms that hold
    running statistics in eval mode ("frozen": those statistics stay bit-identical) or
    train mode ("batch"), whatever mode the model came in; evaluation runs in eval mode.
    ``engine``: "pytorch" (stock autograd) or "lean": the steps run through
    ``odt.lean(model, plan)``, which shares the model's parameters and buffers, computes
    the same gradients and keeps only what backward needs (fp32 plans only). The data
    order, optimizer, checkpoints and History are the same; ``History.engine`` records it.

    Precision (``odtkit.quant.precision``): the plan's, or ``precision`` for a scheme name
    or no plan. bf16/fp16: autocast around forward and loss (fp16 with a GradScaler whose
    scale and skipped steps the History records), fp8: conv/linear inputs, weights and
    gradients cast through float8; the parameters stay float32. int8: ``model`` must be
    an Int8Model (``odt.quant.to_int8``; a float model is refused, not converted), whose
    integers are re-rounded after each step (``rounding``: "nearest" or "stochastic");
    ``qas=True`` applies ``odt.quant.qas_`` before training (int8 only).

    A channel-sparse plan (``TrainPlan.channels``) updates only the selected entries of
    its parameters, with exactly the gradient, momentum, moments and weight decay torch
    computes for them; the other entries stay bit-identical (``make_optimizer``'s masks).
    """
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                      momentum=momentum, weight_decay=weight_decay, seed=seed,
                      drop_last=drop_last, max_steps=max_steps,
                      checkpoint_every=checkpoint_every, eval_batch_size=eval_batch_size,
                      precision=precision, qas=qas, rounding=rounding)
    check_choice("engine", engine, ENGINES)
    path = _checkpoint_path(checkpoint, checkpoint_every)
    check_task(task)
    model.train()
    plan = _apply_plan(model, plan, cfg.precision)
    if plan is None and engine == "lean":  # the parameters that require grad, as they are
        plan = make_plan(model, lambda name, p: p.requires_grad, norm_stats="batch")
    if plan is not None:
        _check_engine(engine, plan)
        plan.norm_mode_(model)
    cfg = dataclasses.replace(cfg, precision="fp32" if plan is None else plan.precision)
    check_precision_model(cfg.precision, model, cfg.qas)
    check_model(model, task)
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    loop = _Checkpointed(model, task, cfg, loss_fn=loss_fn, progress=progress,
                         forward=_view(model, plan, engine), label=f"train {task.name}",
                         plan=plan)
    loop.path, loop.callbacks, loop.norms = path, tuple(callbacks), plan
    loop.history = dataclasses.replace(loop.history, engine=engine)
    loop.fingerprint = _fingerprint(cfg, model, task, plan, loss_fn, engine)
    torch.manual_seed(cfg.seed)
    if path is not None and path.exists():
        loop.resume(load_checkpoint(path))
    try:
        return loop.run()
    finally:
        loop.precision.close()


class _Checkpointed(Loop):
    """The core loop plus checkpoints (mid-epoch and per epoch) and epoch callbacks."""

    path: Path | None = None
    fingerprint: dict[str, Any]
    callbacks: tuple[Callable[[History, nn.Module], None], ...] = ()
    norms: TrainPlan | None = None  # the plan whose norm mode the steps run in

    def after_step(self, batch: Any) -> None:
        s, every = self.state, self.config.checkpoint_every
        mid_epoch = s.step < self.steps_per_epoch and s.global_step < self.total_steps
        if every and mid_epoch and s.global_step % every == 0:
            self.save()

    def after_epoch(self) -> None:
        self.save()
        for callback in self.callbacks:
            callback(self.history, self.model)
        if self.norms is not None and self.callbacks:  # a callback may have changed modes
            for module in {self.model, self.forward}:
                set_norm_mode_(module, self.norms.norm_stats)

    def save(self) -> None:
        if self.path is None:
            return
        save_checkpoint({
            "config": self.fingerprint, "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(), "data_rng": self.gen.get_state(),
            "rng": rng_state(self.device), "history": self.history.as_dict(),
            "loop": dict(vars(self.state)), "precision": self.precision.state_dict(),
        }, self.path)  # fmt: skip
        self._note_checkpoint()

    def _note_checkpoint(self) -> None:
        """What a divergence message says about the checkpoint that is left intact."""
        self.note = (f" The checkpoint {str(self.path)!r} holds the last good state (step "
                     f"{self.state.global_step}); to train again with other settings, pass "
                     "another checkpoint path or delete it.")

    def resume(self, state: dict[str, Any]) -> None:
        check_fingerprint(state["config"], self.fingerprint, self.path)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["data_rng"])
        set_rng_state(state["rng"], self.device)
        if "precision" in state:
            self.precision.load_state_dict(state["precision"])
        self.history = History.from_dict(state["history"])
        self.state = LoopState(**state["loop"])
        self._note_checkpoint()


def _checkpoint_path(checkpoint: object, every: int | None) -> Path | None:
    if checkpoint is None:
        if every is not None:
            raise ValueError(f"checkpoint_every={every} needs a file to write: pass "
                             "checkpoint='run.pt' as well, or drop checkpoint_every")
        return None
    path = Path(checkpoint)  # type: ignore[arg-type]
    if path.is_dir():
        raise ValueError(f"checkpoint={str(path)!r} is a directory; pass a file path, e.g. "
                         f"checkpoint={str(path / 'run.pt')!r}")
    return path


def _apply_plan(model: nn.Module, plan: TrainPlan | str | None,
                precision: str | None) -> TrainPlan | None:
    """The plan as a checked TrainPlan at its precision, applied to ``model``.

    ``precision`` must agree with a TrainPlan's and sets a scheme's (default: "int8" for
    an Int8Model, else "fp32"). No plan at fp32 leaves ``requires_grad`` as it is; at
    another precision it means "full". The model keeps its float32 parameters whatever
    the precision (``TrainPlan.check_dtype``'s model-in-that-dtype check is not run).
    """
    if isinstance(plan, TrainPlan):
        if precision is not None and precision != plan.precision:
            raise ValueError(f"the plan trains in {plan.precision!r} but precision="
                             f"{precision!r}; set it in one place: odt.plan(model, scheme, "
                             f"precision={precision!r}) or precision={plan.precision!r}")
    else:
        if precision is None:
            precision = "int8" if isinstance(model, Int8Model) else "fp32"
        if plan is None and precision == "fp32":
            return None
        if plan is None or isinstance(plan, str):
            plan = make_plan(model, "full" if plan is None else plan, precision=precision)
        else:
            plan = as_plan(model, plan)  # a TypeError naming what a plan can be
    if isinstance(model, Int8Model) and plan.precision != "int8":
        raise ValueError(f"an Int8Model trains its integers with precision='int8' (re-rounded "
                         f"after every step), got {plan.precision!r}; make the plan with "
                         "odt.plan(model, scheme, precision='int8')")
    plan.check_model(model)
    if plan.precision == "fp32":
        plan.check_dtype(model)  # trained in its own dtype: it must be float32
    plan.apply_(model)
    return plan


def _check_engine(engine: str, plan: TrainPlan) -> None:
    if engine == "lean" and plan.precision != "fp32":
        raise ValueError(f"engine='lean' trains fp32 plans only, got precision "
                         f"{plan.precision!r}; pass engine='pytorch' or make the plan with "
                         "precision='fp32'")


def _view(model: nn.Module, plan: TrainPlan | None, engine: str) -> nn.Module:
    """``model`` itself, or, for the lean engine or a plan that recomputes modules, a
    lean-engine view of it that shares every parameter and buffer with ``model``."""
    if plan is None or (engine != "lean" and not plan.recompute):
        return model
    view = lean(model, plan)
    originals = dict(model.named_modules())
    for name, module in view.named_modules():
        source = originals[name]
        for key, param in source.named_parameters(recurse=False):
            setattr(module, key, param)
        for key, buf in source.named_buffers(recurse=False):
            setattr(module, key, buf)
    return view


def _fingerprint(cfg: TrainConfig, model: nn.Module, task: Any, plan: TrainPlan | None,
                 loss_fn: LossFn, engine: str) -> dict[str, Any]:
    """What a resume must match: the config plus task, model, plan (its norm statistics
    too), loss and engine (the defaults, batch statistics and stock autograd, leave the
    fingerprint of runs from before they were recorded as it was)."""
    recipe = None if plan is None else (f"{plan.scheme}, precision {plan.precision}, "
                                        f"recompute {list(plan.recompute)}")
    if plan is not None and plan.channels:
        recipe += f", channels {[list(e) for e in plan.channels]}"
    if plan is not None and plan.norm_stats != "batch":
        recipe += f", norm statistics {plan.norm_stats}"
    extra = {} if engine == "pytorch" else {"engine": engine}
    return {**extra,
        **cfg.fingerprint(), "task": str(task.name), "train_samples": len(task.x_train),
        "model": _model_layout(model),
        "modules": [f"{name or '(model)'}: {type(m).__name__}"
                    for name, m in model.named_modules()],
        "trainable": sorted(name for name, p in model.named_parameters() if p.requires_grad),
        "plan": recipe, "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__),
    }  # fmt: skip


def _model_layout(model: nn.Module) -> str:
    """Class name, size and a digest of state_dict names/shapes: a resume must match it."""
    layout = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    digest = hashlib.sha1(layout.encode()).hexdigest()[:12]
    numel = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}, {numel} parameters, layout {digest}"
