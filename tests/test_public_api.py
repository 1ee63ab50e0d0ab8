"""The public API notebooks and users call: every exported name resolves, the verbs stay
functions whatever was imported before, and old places still work with a warning that
names the new one."""

from __future__ import annotations

import importlib
import pkgutil
import warnings

import pytest

import odtkit as odt


def _import_everything() -> None:
    for info in pkgutil.walk_packages(odt.__path__, "odtkit."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def test_every_exported_name_resolves_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in odt.__all__:
            assert getattr(odt, name) is not None, name


def test_the_verbs_stay_functions_after_every_subpackage_is_imported():
    """A subpackage named like a verb (``train/``, ``lean/``) would replace ``odt.train``
    with a module as soon as anything imported it; the house avoids that."""
    _import_everything()
    for verb in ("train", "lean", "plan", "estimate", "measure", "device", "devices",
                 "evaluate", "load_checkpoint", "format_bytes", "smoke"):
        value = getattr(odt, verb)
        assert callable(value) and not isinstance(value, type(odt)), verb
    assert odt.lean.__module__ == "odtkit.engine"
    assert odt.train.__module__.startswith("odtkit.training")


@pytest.mark.parametrize(("old", "new", "attr"), [
    ("optim", "odtkit.training.optim", "make_optimizer"),
    ("checkpoint", "odtkit.training.checkpoint", "load_checkpoint"),
    ("federated", "odtkit.distributed.federated", "federated"),
    ("ddp", "odtkit.distributed.ddp", "train_ddp"),
    ("exercises", "odtkit.lab", "check_training_state_bytes"),
])
def test_moved_modules_warn_and_name_the_new_place(old, new, attr):
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = getattr(odt, old)
    assert module is importlib.import_module(new)
    assert callable(getattr(module, attr))


@pytest.mark.parametrize("name", ["SUITE", "lab_model", "LAB_TASK", "check_topk_ef"])
def test_lab_names_moved_out_of_distributed_warn(name):
    with pytest.warns(DeprecationWarning, match=rf"odtkit\.lab\.{name}"):
        value = getattr(odt.distributed, name)
    assert value is getattr(odt.lab, name)


def test_the_memory_exercise_check_moved_to_the_lab_book():
    """The library never imports the lab book, so the old place names the new one."""
    with pytest.raises(AttributeError, match=r"odt\.lab\.check_conv_saved_bytes"):
        odt.memory.check_conv_saved_bytes  # noqa: B018


def test_unknown_names_say_so():
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        odt.trian  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'simulat'"):
        odt.distributed.simulat  # noqa: B018


def test_design_public_api_runs_end_to_end():
    """The API at a glance from the design notes, on the smallest inputs."""
    assert "stm32f746" in odt.devices()
    dev = odt.device("STM32F746")
    task = odt.datasets.load("digits").subset(n_train=64, n_test=32)
    model = odt.models.create("mlp", input_shape=task.input_shape, num_classes=task.num_classes)
    x = odt.models.example_input(model, batch_size=2)
    plan = odt.plan(model, "bias-only", precision="fp32")
    est = odt.estimate(model, x, plan, optimizer="sgd-m", engine="lean")
    meas = odt.measure(model, x, plan, optimizer="sgd-m", engine="lean")
    assert est.by_category == meas.by_category
    fit = dev.fit(est)
    assert fit.device == "stm32f746" and fit.fits == (fit.headroom_bytes >= 0)
    lean = odt.lean(model, plan)
    assert odt.engine.is_lean(lean) and not odt.engine.is_lean(model)
    hist = odt.train(model, task, odt.plan(model, "full"), epochs=1, seed=0, progress=False)
    assert hist.epochs == 1 and 0.0 <= hist.test_acc[0] <= 1.0
