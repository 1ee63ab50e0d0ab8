"""The model zoo: shapes, determinism, summaries and MACs against hand counts, pretrained files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import odtkit as odt
from odtkit import models


@pytest.mark.parametrize("name", models.names())
def test_every_zoo_model_runs_forward_on_its_example_input(name):
    model = models.create(name, num_classes=7).eval()
    x = models.example_input(model, batch_size=3)
    assert x.shape == (3, *model.input_shape)
    with torch.no_grad():
        assert model(x).shape == (3, 7)


@pytest.mark.parametrize("name", ["mcunet-tiny", "mbv2-tiny", "resnet8", "mlp"])
def test_image_models_run_on_the_digits_size(name):
    model = models.create(name, input_shape=(1, 8, 8)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_ds_cnn_takes_mnist1d_sequences():
    model = models.create("ds-cnn", input_shape=(1, 40)).eval()
    with torch.no_grad():
        assert model(torch.randn(4, 1, 40)).shape == (4, 10)


def test_there_are_at_least_five_models():
    assert len(models.names()) >= 5
    assert {"mcunet-tiny", "mbv2-tiny", "ds-cnn", "resnet8", "mlp"} <= set(models.names())


@pytest.mark.parametrize("name", models.names())
def test_same_seed_same_weights_and_other_seed_differs(name):
    a, b, c = (models.create(name, seed=s) for s in (0, 0, 1))
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), k
    assert any(not torch.equal(pa, pc) for pa, pc in
               zip(a.parameters(), c.parameters(), strict=True))


def test_width_scales_the_parameter_count():
    small = sum(p.numel() for p in models.create("mbv2-tiny", width=0.5).parameters())
    large = sum(p.numel() for p in models.create("mbv2-tiny", width=2.0).parameters())
    assert large > 2 * small


def test_mbv2_tiny_has_inverted_residuals_with_depthwise_convs():
    model = models.create("mbv2-tiny")
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d)
                 and m.groups == m.in_channels == m.out_channels and m.groups > 1]
    assert depthwise and any(isinstance(m, nn.ReLU6) for m in model.modules())


def test_layer_macs_match_hand_counts():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    out = conv(torch.zeros(2, 4, 5, 5))                      # (2, 6, 5, 5)
    assert models.layer_macs(conv, (None,), out) == 2 * 6 * 5 * 5 * 4 * 3 * 3
    dw = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)
    out = dw(torch.zeros(1, 6, 8, 8))                        # (1, 6, 4, 4)
    assert models.layer_macs(dw, (None,), out) == 6 * 4 * 4 * 1 * 9
    conv1d = nn.Conv1d(3, 5, 4)
    out = conv1d(torch.zeros(1, 3, 10))                      # (1, 5, 7)
    assert models.layer_macs(conv1d, (None,), out) == 5 * 7 * 3 * 4
    fc = nn.Linear(7, 3)
    assert models.layer_macs(fc, (None,), fc(torch.zeros(5, 7))) == 5 * 3 * 7
    bn = nn.BatchNorm2d(3).eval()
    assert models.layer_macs(bn, (None,), bn(torch.zeros(2, 3, 4, 4))) == 2 * 3 * 4 * 4
    relu = nn.ReLU()
    assert models.layer_macs(relu, (None,), relu(torch.zeros(9))) == 0


@pytest.mark.parametrize("name", models.names())
def test_summary_totals_agree_with_the_model(name):
    model = models.create(name)
    s = models.summary(model, models.example_input(model))
    assert s.total_params == sum(p.numel() for p in model.parameters())
    assert s.total_macs == sum(r.macs for r in s.rows) > 0
    text = s.table()
    assert "total" in text and f"{s.total_params:,}" in text
    assert "<table>" in s._repr_html_()


def test_summary_of_a_hand_built_model():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3))
    s = models.summary(model, torch.zeros(1, 1, 4, 4))
    assert [r.output_shape for r in s.rows] == [(1, 2, 4, 4), (1, 2, 4, 4), (1, 32), (1, 3)]
    assert s.total_macs == 2 * 16 * 9 + 3 * 32
    assert s.total_params == (2 * 9 + 2) + (32 * 3 + 3)


class _Twice(nn.Module):
    """A shared Linear called twice, then a block with a parameter of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(4, 2))
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.block(self.fc(self.fc(x))) * self.scale


def test_layer_calls_yields_every_layer_call_with_its_real_output():
    model = _Twice()
    x = torch.randn(3, 4)
    with torch.no_grad(), models.layer_calls(model) as calls:
        out = model(x)
    # leaves and modules holding parameters themselves (the model: `scale`), in the order
    # their calls finish; the shared fc twice
    assert [c.name for c in calls] == ["fc", "fc", "block.0", "block.1", ""]
    with torch.no_grad():  # the outputs are what the layers compute, by hand
        first = x @ model.fc.weight.T + model.fc.bias
        second = first @ model.fc.weight.T + model.fc.bias
    assert torch.allclose(calls[0].output, first) and calls[1].inputs[0] is calls[0].output
    assert torch.allclose(calls[1].output, second)
    assert calls[-1].module is model and torch.equal(calls[-1].output, out)
    for module in model.modules():  # the hooks are gone
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_layer_calls_callbacks_see_every_module_and_hooks_go_on_error():
    model = _Twice()
    seen = []
    with models.layer_calls(model, lambda n, m, i, o: seen.append(("out", n)),
                            on_enter=lambda n, m: seen.append(("in", n)),
                            every_module=True) as calls:
        model(torch.randn(1, 4))
    assert calls == []  # with a callback nothing is kept
    assert seen[:3] == [("in", ""), ("in", "fc"), ("out", "fc")]
    assert ("in", "block") in seen and ("out", "block") in seen  # a container, not a layer
    assert not models.is_layer(model.block) and models.is_layer(model) and \
        models.is_layer(model.block[0])
    with pytest.raises(RuntimeError), models.layer_calls(model):
        model(torch.randn(1, 5))  # wrong width: torch raises inside fc
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("layer", ["linear", "conv2d", "conv1d"])
@pytest.mark.parametrize(("input_grad", "weight_grad"),
                         [(True, True), (True, False), (False, True), (False, False)])
def test_backward_macs_match_pytorchs_flop_counter(layer, input_grad, weight_grad):
    """PyTorch's FlopCounterMode counts the backward matmuls/convolutions autograd really
    runs (2 FLOP per MAC); the formula must predict them from the forward MACs."""
    from torch.utils.flop_counter import FlopCounterMode

    module, x = {
        "linear": (nn.Linear(7, 3), torch.randn(5, 7)),
        "conv2d": (nn.Conv2d(4, 6, 3, stride=2, padding=1), torch.randn(2, 4, 9, 9)),
        "conv1d": (nn.Conv1d(3, 5, 4), torch.randn(2, 3, 11)),
    }[layer]
    module.weight.requires_grad_(weight_grad)
    module.bias.requires_grad_(True)  # a bias gradient is a sum: no MACs
    x.requires_grad_(input_grad)
    out = module(x)
    forward = models.layer_macs(module, (x,), out)
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert 2 * models.backward_macs(forward, weight_grad=weight_grad,
                                    input_grad=input_grad) == counter.get_total_flops()


def test_backward_macs_of_a_depthwise_conv_by_hand():
    # (FlopCounterMode multiplies a grouped conv's weight gradient by the groups: a torch
    # bug fixed upstream in pytorch/pytorch#183405, so the reference here is a hand count.)
    # 2 images, 6 channels, 3x3 kernel, 7x7 -> 5x5: forward 2*6*25*9 = 2700 MACs.
    # dL/dW: each of the 6*9 weights sums x*g over 2 images x 25 positions = 54*50 = 2700;
    # dL/dx: each of the 2*6*25 output gradients reaches 9 inputs = 2700.
    conv = nn.Conv2d(6, 6, 3, groups=6)
    forward = models.layer_macs(conv, (None,), conv(torch.zeros(2, 6, 7, 7)))
    assert forward == 2700
    assert models.backward_macs(forward, weight_grad=True, input_grad=True) == 2700 + 2700
    assert models.backward_macs(forward, weight_grad=False, input_grad=True) == 2700
    assert models.backward_macs(forward, weight_grad=False, input_grad=False) == 0


def test_backward_macs_rejects_a_negative_count():
    with pytest.raises(ValueError, match="forward_macs must be an integer >= 0"):
        models.backward_macs(-1, weight_grad=True, input_grad=True)


def test_summary_restores_each_modules_own_mode():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a frozen BatchNorm, as a plan may leave it
    before = [m.training for m in model.modules()]
    models.summary(model, torch.randn(2, 3))
    assert [m.training for m in model.modules()] == before == [True, True, False, True]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mbv2-tiny"):
        models.create("mbv2tiny-x")
    with pytest.raises(ValueError, match="num_classes"):
        models.create("mlp", num_classes=0)
    with pytest.raises(ValueError, match="width"):
        models.create("mlp", width=-1)
    with pytest.raises(ValueError, match="input_shape"):
        models.create("resnet8", input_shape=(3, 32))
    with pytest.raises(ValueError, match="in_channels"):
        models.create("resnet8", in_channels=1, input_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="input_shape"):
        models.example_input(nn.Linear(2, 2))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_a_seed_must_be_a_non_negative_int(seed):
    # torch.manual_seed(-1) is accepted by torch and silently means 2**64 - 1
    with pytest.raises(ValueError, match=rf"seed must be a non-negative integer, got "
                                         rf"seed={seed!r}.*seed=0"):
        models.create("mlp", seed=seed)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        models.example_input(models.create("mlp"), seed=seed)


@pytest.mark.parametrize("width", [float("inf"), float("nan"), 0, -0.5])
def test_width_must_be_finite_and_positive(width):
    with pytest.raises(ValueError, match=rf"width must be a finite number in \(0, inf\), "
                                         rf"got width={width!r}"):
        models.create("mlp", width=width)


def test_model_names_ignore_case_and_separators():
    a = models.create("MCUNet Tiny")
    assert a.config["name"] == "mcunet-tiny"
    with pytest.raises(ValueError, match=r"unknown model 'resnet9'.*Did you mean 'resnet8'"):
        models.create("resnet9")


def test_pretrained_roundtrip_and_config_check(tmp_path, monkeypatch):
    monkeypatch.setenv("ODTKIT_PRETRAINED_DIR", str(tmp_path))
    model = models.create("mlp", input_shape=(1, 8, 8), seed=3)
    path = models.save_pretrained(model, models.pretrained_path("mlp"), source_task="t",
                                  source_test_acc=0.5)
    assert path == tmp_path / "mlp.pt" and path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    loaded = models.create("mlp", pretrained=True)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="num_classes"):
        models.create("mlp", num_classes=5, pretrained=True)


def test_missing_pretrained_file_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ODTKIT_PRETRAINED_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make data"):
        models.create("resnet8", pretrained=True)


@pytest.mark.parametrize("name", ["mcunet-tiny", "mbv2-tiny", "mlp"])
def test_shipped_checkpoints_load_and_know_the_source_domain(name):
    model = models.create(name, pretrained=True)
    task = odt.datasets.load("digits-shift")
    source_acc = odt.evaluate(model, task.source.x_test, task.source.y_test)
    target_acc = odt.evaluate(model, task.x_test, task.y_test)
    assert source_acc > 0.9                  # it learned the source domain...
    assert target_acc < source_acc - 0.2     # ...and the shift hurts it, which is the point


def test_build_script_reproduces_the_shipped_checkpoint(tmp_path, monkeypatch):
    """data/build_pretrained.py is deterministic: rebuilding gives the committed weights."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "data" / "build_pretrained.py"
    spec = importlib.util.spec_from_file_location("build_pretrained", script)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    shipped = torch.load(models.pretrained_path("mlp"), weights_only=True)
    monkeypatch.setenv("ODTKIT_PRETRAINED_DIR", str(tmp_path))
    build.build("mlp")
    rebuilt = torch.load(models.pretrained_path("mlp"), weights_only=True)
    assert shipped["config"] == rebuilt["config"]
    assert shipped["source_test_acc"] == rebuilt["source_test_acc"]
    # Bit for bit on the CPU that built it; another CPU's SIMD kernels round differently
    # (measured: at most 1.3e-6 apart after 30 epochs), so compare to 1e-5.
    for key, value in shipped["state_dict"].items():
        torch.testing.assert_close(rebuilt["state_dict"][key], value, rtol=0, atol=1e-5,
                                   msg=key)
