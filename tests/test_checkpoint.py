"""Checkpoints carry a checksum: flipped bytes, a truncated file or a hand edit are refused
with the file named; a directory, or a model with other layer types, is refused too."""

from __future__ import annotations

import hashlib

import pytest
import torch
from _train_worker import make_model, make_task
from torch import nn

from odtkit.training import load_checkpoint, train
from odtkit.training.checkpoint import checksum

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def written(tmp_path):
    """A real checkpoint after one epoch of the toy run, and its state as written."""
    path = tmp_path / "run.pt"
    train(make_model(), make_task(), epochs=1, checkpoint=path, progress=False)
    return path, load_checkpoint(path)


def test_flipped_bytes_in_tensor_data_are_refused(written):
    path, state = written
    raw = bytearray(path.read_bytes())
    at = raw.find(state["model"]["2.weight"].numpy().tobytes())  # 16 x 16 fp32, stored raw
    assert at > 0
    raw[at:at + 64] = bytes(b ^ 0xFF for b in raw[at:at + 64])
    path.write_bytes(raw)
    # torch reads the damaged file without complaint: only the checksum catches it
    damaged = torch.load(path, weights_only=True)["model"]["2.weight"]
    assert not torch.equal(damaged, state["model"]["2.weight"])
    with pytest.raises(ValueError, match="fails its checksum") as info:
        load_checkpoint(path)
    assert repr(str(path)) in str(info.value)
    with pytest.raises(ValueError, match="fails its checksum"):  # and no resume from it
        train(make_model(), make_task(), epochs=2, checkpoint=path, progress=False)


def test_truncated_file_is_refused_naming_it(written):
    path, _ = written
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="could not be read.*damaged or truncated") as info:
        load_checkpoint(path)
    assert repr(str(path)) in str(info.value)


@pytest.mark.parametrize("edit", ["loop", "history", "drop"])
def test_hand_edit_without_a_new_checksum_is_refused(written, edit):
    """Each edit broke a resume differently before (ZeroDivisionError, wrong numbers,
    KeyError); now all are refused before anything is loaded."""
    path, _ = written
    state = torch.load(path, weights_only=True)
    if edit == "loop":
        state["loop"]["global_step"] = 0
    elif edit == "history":
        state["history"]["loss"][0] = 0.0
    else:
        del state["history"]
    torch.save(state, path)
    match = "lacks history" if edit == "drop" else "fails its checksum"
    with pytest.raises(ValueError, match=match) as info:
        load_checkpoint(path)
    assert repr(str(path)) in str(info.value)


def test_checksum_is_sha256_of_a_canonical_stream():
    """By hand: a tensor is tag T + length + dtype/shape, then tag B + length + raw bytes."""

    def part(tag: bytes, data: bytes) -> bytes:
        return tag + len(data).to_bytes(8, "little") + data

    t = torch.tensor([1.0, -2.0])
    want = hashlib.sha256(part(b"T", b"torch.float32(2,)")
                          + part(b"B", t.numpy().tobytes())).hexdigest()  # fmt: skip
    assert checksum(t) == want
    # dict order does not matter, tuples and lists agree (a round trip may swap them)
    assert checksum({"a": 1, "b": (2, 3)}) == checksum({"b": [2, 3], "a": 1})
    assert checksum({"a": 1}) != checksum({"a": 1.0}) != checksum({"a": "1"})
    assert checksum(torch.tensor([1.0])) != checksum(torch.tensor([1.0], dtype=torch.float64))


def test_a_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="is a directory; pass a file path") as info:
        train(make_model(), make_task(), checkpoint=tmp_path, progress=False)
    assert "Delete" not in str(info.value) and str(tmp_path / "run.pt") in str(info.value)
    with pytest.raises(ValueError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_other_layer_types_with_the_same_parameters_are_refused(written):
    path, _ = written
    other = make_model()
    other[4] = nn.Tanh()  # same parameter names and shapes, another function
    assert [p.shape for p in other.parameters()] == [p.shape for p in make_model().parameters()]
    with pytest.raises(ValueError, match="module='4: ReLU', but this call has module='4: Tanh'"):
        train(other, make_task(), epochs=1, checkpoint=path, progress=False)
