"""Datasets: the built-in tasks, Task validation, and the local-file loaders on small fake
files written in the real formats (idx, pickled CIFAR batches, wav folders)."""

from __future__ import annotations

import gzip
import math
import pathlib
import pickle
import random
import struct
import wave
from collections import Counter

import numpy as np
import pytest
import torch

import odtkit.datasets as ds
from odtkit.datasets import _audio
from odtkit.models import create

# ------------------------------------------------------------------- built-in tasks


def test_digits_shapes_split_and_determinism():
    task = ds.load("digits")
    assert task.input_shape == (1, 8, 8) and task.num_classes == 10
    assert task.x_train.dtype == torch.float32 and task.y_train.dtype == torch.int64
    assert len(task.y_train) + len(task.y_test) == 1797  # scikit-learn's digits
    assert abs(len(task.y_test) / 1797 - 0.3) < 0.01
    assert set(task.y_test.tolist()) == set(range(10)) == set(task.y_train.tolist())
    assert 0.0 <= task.x_train.min() and task.x_train.max() == 1.0
    again = ds.load("digits")
    assert torch.equal(task.x_train, again.x_train) and torch.equal(task.y_test, again.y_test)
    assert not torch.equal(ds.load("digits", seed=1).y_train, task.y_train)


def _image_counts(*tensors: torch.Tensor) -> Counter:
    return Counter(img.numpy().tobytes() for t in tensors for img in t)


def test_digits_shift_source_and_target_are_disjoint_halves():
    # severity 0 leaves target images untouched: then source + target must be exactly the
    # 1797 digits, each used once (as a multiset, so duplicate images do not matter)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    everything = (bunch.images / 16.0).astype(np.float32)[:, None]
    task = ds.load("digits-shift", severity=0.0)
    src = task.source
    parts = (src.x_train, src.x_test, task.x_train, task.x_test)
    assert sum(len(p) for p in parts) == 1797
    assert _image_counts(*parts) == _image_counts(torch.tensor(everything))
    labels = torch.cat([src.y_train, src.y_test, task.y_train, task.y_test])
    assert Counter(labels.tolist()) == Counter(bunch.target.tolist())
    assert abs(len(src.y_train) + len(src.y_test) - 1797 / 2) <= 10


def test_shipped_digits_equal_scikit_learns_copy():
    """The package's digits file holds exactly the images and labels scikit-learn bundles."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = ds._digits_arrays()
    assert np.array_equal(x, (bunch.images / 16.0).astype(np.float32)[:, None])
    assert np.array_equal(y, bunch.target) and y.dtype == np.int64


def test_damaged_digits_file_is_refused_with_the_fix(tmp_path, monkeypatch):
    with np.load(ds.DIGITS_FILE) as f:
        images, labels = f["images"].copy(), f["labels"]
    images[5, 3, 3] ^= 1  # one grey level off
    bad = tmp_path / "digits.npz"
    np.savez_compressed(bad, images=images, labels=labels)
    monkeypatch.setattr(ds, "DIGITS_FILE", bad)
    ds._digits_arrays.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"damaged .*build_digits\.py"):
            ds.load("digits")
        monkeypatch.setattr(ds, "DIGITS_FILE", tmp_path / "missing.npz")
        with pytest.raises(RuntimeError, match=r"cannot be read .*reinstall odtkit"):
            ds.load("digits")
    finally:
        ds._digits_arrays.cache_clear()


def test_digits_shift_target_statistics_differ_from_source():
    task = ds.load("digits-shift")
    assert task.name == "digits-shift" and task.source.input_shape == (1, 8, 8)
    assert task.source.source is None and "severity 1" in task.description
    src = torch.cat([task.source.x_train, task.source.x_test])
    tgt = torch.cat([task.x_train, task.x_test])
    assert 0.0 <= tgt.min() and tgt.max() <= 1.0
    # the new sensor: lower contrast, a lifted black level, dimmer peaks
    assert tgt.std() < 0.85 * src.std()
    assert (src == 0).float().mean() > 0.4 and (tgt == 0).float().mean() < 0.1
    assert tgt.amax(dim=(1, 2, 3)).mean() < 0.92 < src.amax(dim=(1, 2, 3)).mean()
    again = ds.load("digits-shift")
    assert torch.equal(task.x_train, again.x_train)
    assert torch.equal(task.source.x_test, again.source.x_test)


def test_mnist1d_shapes_determinism_and_global_rng_untouched():
    np.random.seed(1234)
    random.seed(1234)
    np_before, py_before = np.random.get_state(), random.getstate()
    ds._mnist1d_arrays.cache_clear()  # generate for real, not from the cache
    task = ds.load("mnist1d", num_samples=200, seed=7)
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:] and random.getstate() == py_before
    assert task.input_shape == (1, 40) and task.num_classes == 10
    assert task.x_train.shape == (len(task.y_train), 1, 40)
    assert len(task.y_train) + len(task.y_test) == 200
    assert task.x_test.dtype == torch.float32 and task.y_test.dtype == torch.int64
    assert set(task.y_train.tolist()) == set(range(10))
    ds._mnist1d_arrays.cache_clear()
    again = ds.load("mnist1d", num_samples=200, seed=7)
    assert torch.equal(task.x_train, again.x_train) and torch.equal(task.y_test, again.y_test)
    with pytest.raises(ValueError, match="num_samples"):
        ds.load("mnist1d", num_samples=5)


def _tiny_task(**changes) -> ds.Task:
    fields = dict(name="tiny", description="test", x_train=torch.zeros(4, 1, 2, 2),
                  y_train=torch.tensor([0, 1, 0, 1]), x_test=torch.zeros(2, 1, 2, 2),
                  y_test=torch.tensor([1, 0]), input_shape=(1, 2, 2), classes=("a", "b"))
    fields.update(changes)
    return ds.Task(**fields)


def test_task_validation_errors():
    assert _tiny_task().num_classes == 2
    with pytest.raises(TypeError, match="float32"):
        _tiny_task(x_train=torch.zeros(4, 1, 2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="int64"):
        _tiny_task(y_test=torch.tensor([1, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match="4 samples but y_train has 3"):
        _tiny_task(y_train=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="shape"):
        _tiny_task(x_test=torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="outside 0..1"):
        _tiny_task(y_train=torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="2 classes"):
        _tiny_task(classes=("only",), y_train=torch.zeros(4, dtype=torch.int64),
                   y_test=torch.zeros(2, dtype=torch.int64))
    other = _tiny_task(x_train=torch.zeros(4, 3), x_test=torch.zeros(2, 3), input_shape=(3,))
    with pytest.raises(ValueError, match="source input_shape"):
        _tiny_task(source=other)


def test_subset_draws_real_rows_deterministically():
    task = ds.load("digits")
    small = task.subset(n_train=50, n_test=20, seed=3)
    assert small.x_train.shape == (50, 1, 8, 8) and len(small.y_test) == 20
    same_image = (small.x_train.flatten(1)[:, None] == task.x_train.flatten(1)[None]).all(-1)
    same_label = small.y_train[:, None] == task.y_train[None]
    assert (same_image & same_label).any(dim=1).all()  # every row is an original sample
    assert torch.equal(small.x_train, task.subset(n_train=50, n_test=20, seed=3).x_train)
    assert not torch.equal(small.y_train, task.subset(n_train=50, seed=4).y_train)
    assert torch.equal(task.subset(n_train=10).x_test, task.x_test)  # None keeps a split
    shifted = ds.load("digits-shift")
    assert shifted.subset(n_train=5).source is shifted.source
    for bad in (0, len(task.y_train) + 1):
        with pytest.raises(ValueError, match=rf"n_train must be an integer in \[1, "
                                             rf"{len(task.y_train)}\], got n_train={bad}"):
            task.subset(n_train=bad)
    for bad in (True, 2.5):
        with pytest.raises(TypeError, match=f"n_train must be an integer, got n_train={bad}"):
            task.subset(n_train=bad)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        task.subset(n_train=5, seed=-1)


@pytest.mark.parametrize("name", ["digits", "digits-shift", "mnist1d"])
def test_a_negative_seed_is_refused_with_the_fix(name):
    kw = {"num_samples": 200} if name == "mnist1d" else {}
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got "
                                         r"seed=-1; e\.g\. seed=0"):
        ds.load(name, seed=-1, **kw)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_a_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match=rf"test_fraction must be a finite number in \(0, 1\), "
                                         rf"got test_fraction={fraction!r}"):
        ds.load("digits", test_fraction=fraction)
    with pytest.raises(ValueError, match=r"source_fraction must be a finite number in \(0, 1\)"):
        ds.load("digits-shift", source_fraction=fraction)


def test_a_fraction_that_empties_a_split_names_the_class_and_the_usable_range():
    # digits: the smallest class ('8') has 174 samples; 0.9999 puts all of them in the test
    # split, so training would see none of it. The usable range is (0.5/174, 1 - 0.5/174).
    with pytest.raises(ValueError, match=r"test_fraction=0\.9999 leaves no train samples of "
                                         r"class 0 \(178 samples: 178 test, 0 train\).*"
                                         r"between 0\.00287 and 0\.997") as err:
        ds.load("digits", test_fraction=0.9999)
    assert "e.g. test_fraction=0.3" in str(err.value)
    with pytest.raises(ValueError, match=r"test_fraction=0\.001 leaves no test samples"):
        ds.load("digits", test_fraction=0.001)
    with pytest.raises(ValueError, match=r"source_fraction=0\.999 leaves no target samples"):
        ds.load("digits-shift", source_fraction=0.999)
    edge = ds.load("digits", test_fraction=0.003)  # round(174 * 0.003) = 1: one per class
    assert len(edge.y_test) == 10 and set(edge.y_test.tolist()) == set(range(10))


def test_a_keyword_the_loader_does_not_take_is_named():
    with pytest.raises(TypeError, match=r"keyword of load\('digits'\) 'sed'.*Did you mean "
                                        r"'seed'.*seed, test_fraction"):
        ds.load("digits", sed=1)


def test_unknown_task_suggests_the_closest_name():
    with pytest.raises(ValueError, match="'mnist'") as err:
        ds.load("minst")
    assert "Valid choices" in str(err.value)
    with pytest.raises(ValueError, match="'digits-shift'"):
        ds.load("digit-shift")
    assert {"digits", "digits-shift", "mnist1d", "mnist", "cifar10",
            "speech-commands"} <= set(ds.names())


# -------------------------------------------------------------------------------- MNIST


def _idx_bytes(arr: np.ndarray) -> bytes:
    """idx encoding: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 sizes, data."""
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _make_mnist(root: pathlib.Path, n_train=12, n_test=5, shape=(28, 28), gz=False,
                seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *shape)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *shape)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, gz):
    arrays = _make_mnist(tmp_path, gz=gz)
    task = ds.load("mnist", root=tmp_path)
    assert task.input_shape == (1, 28, 28) and task.classes == tuple("0123456789")
    assert task.x_train.shape == (12, 1, 28, 28) and task.x_test.dtype == torch.float32
    want = arrays["train-images-idx3-ubyte"] / 255.0
    assert np.allclose(task.x_train[:, 0].numpy(), want, atol=1e-7)
    assert task.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert task.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ("t10k-images-idx3-ubyte.gz" if gz else "t10k-images-idx3-ubyte") in \
        task.description


def test_mnist_shape_comes_from_the_header_and_limits_take_the_first(tmp_path):
    arrays = _make_mnist(tmp_path, shape=(5, 7))
    full = ds.load("mnist", root=tmp_path)
    assert full.input_shape == (1, 5, 7)
    small = ds.load("mnist", root=tmp_path, limit_train=4, limit_test=2)
    assert torch.equal(small.x_train, full.x_train[:4]) and len(small.y_test) == 2
    assert "first 4" in small.description
    assert len(ds.load("mnist", root=tmp_path, limit_train=100).y_train) == 12
    assert arrays["train-images-idx3-ubyte"].shape == (12, 5, 7)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="limit_train"):
            ds.load("mnist", root=tmp_path, limit_train=bad)


def test_mnist_default_root_follows_odtkit_data_dir(tmp_path, monkeypatch):
    _make_mnist(tmp_path / "mnist", n_train=3, n_test=2)
    monkeypatch.setenv("ODTKIT_DATA_DIR", str(tmp_path))
    assert len(ds.load("mnist").y_train) == 3


def test_mnist_missing_file_message(tmp_path):
    _make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as err:
        ds.load("mnist", root=tmp_path)
    msg = str(err.value)
    assert "missing: t10k-labels-idx1-ubyte[.gz]" in msg and str(tmp_path) in msg
    for hint in ("train-images-idx3-ubyte[.gz]", "root=", "ODTKIT_DATA_DIR", "LeCun"):
        assert hint in msg
    assert "http" not in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ds.load("mnist", root=tmp_path / "nowhere")


def _corrupt(tmp_path, name: str, data: bytes) -> str:
    _make_mnist(tmp_path)
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError) as err:
        ds.load("mnist", root=tmp_path)
    assert name in str(err.value)
    return str(err.value)


def test_mnist_corrupt_files_name_the_file_and_the_problem(tmp_path):
    good = _idx_bytes(np.zeros((12, 28, 28)))
    assert "truncated" in _corrupt(tmp_path, "train-images-idx3-ubyte", good[:-10])
    assert "trailing" in _corrupt(tmp_path, "train-images-idx3-ubyte", good + b"x")
    assert "too short" in _corrupt(tmp_path, "train-images-idx3-ubyte", b"\0\0")
    swapped = _corrupt(tmp_path, "train-labels-idx1-ubyte", good)  # image magic 0x803
    assert "0x00000803" in swapped and "0x00000801" in swapped and "swapped" in swapped
    bad_type = _corrupt(tmp_path, "train-labels-idx1-ubyte",
                        struct.pack(">II", 0x0D01, 12) + bytes(48))  # float labels
    assert "0x00000D01" in bad_type
    counts = _corrupt(tmp_path, "train-labels-idx1-ubyte", _idx_bytes(np.zeros(11)))
    assert "12 images" in counts and "11 labels" in counts
    assert "label 10" in _corrupt(tmp_path, "t10k-labels-idx1-ubyte",
                                  _idx_bytes(np.array([1, 2, 10, 3, 4])))


def test_mnist_corrupt_gzip_names_the_file(tmp_path):
    _make_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*gzip"):
        ds.load("mnist", root=tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10

_CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                b"horse", b"ship", b"truck"]


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    """Rows of 3072 bytes: red plane constant (40 + row), green 7, blue a 0..255 ramp."""
    rows = np.empty((n, 3072), dtype=np.uint8)
    rows[:, :1024] = (40 + np.arange(n) + seed)[:, None]
    rows[:, 1024:2048] = 7
    rows[:, 2048:] = (np.arange(1024) % 256)[None]
    return rows


def _dumps(obj, protocol) -> bytes:
    """Pickle; protocol "numpy.core" = protocol 2 with the module name of the original
    files (numpy >= 2 pickles name numpy._core)."""
    if protocol != "numpy.core":
        return pickle.dumps(obj, protocol=protocol)
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray\n",
                                                 b"numpy.core.multiarray\n")


def _make_cifar(folder: pathlib.Path, per_batch=4, n_test=3, protocol=2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(batches):
        n = n_test if name == "test_batch" else per_batch
        labels = [(i * per_batch + j) % 10 for j in range(n)]
        batch = {b"batch_label": name.encode(), b"labels": labels,
                 b"data": _cifar_rows(n, seed=10 * i), b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(_dumps(batch, protocol))
    meta = {b"label_names": _CIFAR_NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_dumps(meta, protocol))


@pytest.mark.parametrize("protocol", [2, "numpy.core", pickle.HIGHEST_PROTOCOL])
def test_cifar10_reads_batches_in_channel_major_order(tmp_path, protocol):
    _make_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    task = ds.load("cifar10", root=tmp_path)  # the folder that holds cifar-10-batches-py
    assert task.input_shape == (3, 32, 32) and task.x_train.shape == (20, 3, 32, 32)
    assert task.classes[:2] == ("airplane", "automobile") and task.num_classes == 10
    assert task.y_train.tolist() == [k % 10 for k in range(20)]
    first = task.x_train[0]
    assert torch.all(first[0] == 40 / 255) and torch.all(first[1] == 7 / 255)  # red, green
    ramp = torch.tensor(np.arange(1024) % 256, dtype=torch.float32).reshape(32, 32) / 255
    assert torch.allclose(first[2], ramp)                   # blue plane, row-major
    assert torch.all(task.x_train[5, 0] == (40 + 1 + 10) / 255)  # 2nd row of batch 2
    assert torch.allclose(task.x_test[:, 0, 0, 0] * 255, torch.tensor([90.0, 91, 92]))
    inner = ds.load("cifar10", root=tmp_path / "cifar-10-batches-py")  # the folder itself
    assert torch.equal(inner.x_test, task.x_test)


def test_cifar10_limit_reads_only_the_batches_it_needs(tmp_path):
    _make_cifar(tmp_path)
    (tmp_path / "data_batch_5").write_bytes(b"not a pickle")
    task = ds.load("cifar10", root=tmp_path, limit_train=6, limit_test=1)
    assert len(task.y_train) == 6 and len(task.y_test) == 1
    assert "data_batch_2" in task.description and "data_batch_3" not in task.description
    with pytest.raises(ValueError, match="data_batch_5"):
        ds.load("cifar10", root=tmp_path)


def test_cifar10_missing_and_malformed_files(tmp_path):
    _make_cifar(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(FileNotFoundError) as err:
        ds.load("cifar10", root=tmp_path)
    msg = str(err.value)
    assert "missing: test_batch" in msg and str(tmp_path) in msg
    assert "cifar-10-batches-py" in msg and "Krizhevsky" in msg and "ODTKIT_DATA_DIR" in msg
    _make_cifar(tmp_path)
    bad = {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"data_batch_3.*\(N, 3072\)"):
        ds.load("cifar10", root=tmp_path)
    bad = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match="data_batch_3.*2 rows.*3 b'labels'"):
        ds.load("cifar10", root=tmp_path)


class _Payload:
    """Unpickling this would create a file: the loader must refuse before it runs."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    _make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": _Payload(marker), b"labels": [0]}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(evil))
    with pytest.raises(ValueError, match="data_batch_1.*refusing to load global"):
        ds.load("cifar10", root=tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------------------ audio


def _htk_mel(f_hz: float) -> float:
    return 2595.0 * math.log10(1.0 + f_hz / 700.0)


def test_mel_scale_is_htk():
    assert abs(float(_audio.hz_to_mel(1000.0)) - 1000.0) < 0.05
    assert abs(float(_audio.hz_to_mel(4000.0)) - _htk_mel(4000.0)) < 1e-9
    assert abs(float(_audio.mel_to_hz(_audio.hz_to_mel(123.4))) - 123.4) < 1e-9


def test_mel_filters_peak_at_their_centre_and_cover_the_band():
    fb = _audio.mel_filterbank()
    assert fb.shape == (40, 241)  # n_fft 480 -> 241 frequency bins
    lo, hi = _htk_mel(20.0), _htk_mel(8000.0)
    for m in range(40):
        # centre m + 1 of 42 mel-spaced points, in Hz, then the nearest 16000/480 Hz bin
        centre_hz = 700.0 * (10 ** ((lo + (m + 1) * (hi - lo) / 41) / 2595.0) - 1)
        centre_bin = round(centre_hz * 480 / 16000)
        assert fb[m, centre_bin] == 1.0 and fb[m].max() == 1.0
        assert int(fb[m].argmax()) == centre_bin
    first, last = round(20 * 480 / 16000), 240
    covered = fb.sum(dim=0)
    assert torch.all(covered[first + 1:last] > 0)       # no gap between 20 Hz and Nyquist
    assert covered[:first + 1].sum() == 0               # nothing below 20 Hz
    peaks = fb.argmax(dim=1)
    inner = covered[int(peaks[0]):int(peaks[-1]) + 1]
    assert torch.allclose(inner, torch.ones_like(inner), atol=1e-6)  # neighbours sum to 1
    with pytest.raises(ValueError, match="too many"):
        _audio.mel_filterbank(n_mels=200)


def test_stft_power_matches_a_numpy_reference():
    wave_ = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    got = _audio.log_mel_spectrogram(wave_)[0].double()
    x = np.pad(wave_[0].double().numpy(), 240, mode="reflect")
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(480) / 480)   # periodic Hann
    frames = np.stack([x[t * 320:t * 320 + 480] * hann for t in range(51)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2               # (51, 241)
    want = np.log(_audio.mel_filterbank().double().numpy() @ power.T + 1e-6)
    assert got.shape == (40, 51)
    assert np.allclose(got.numpy(), want, atol=1e-4)


def test_pure_tone_lands_in_its_mel_band():
    fb = _audio.mel_filterbank()
    for band in (5, 20, 33):
        f_hz = int(fb[band].argmax()) * 16000 / 480
        t = torch.arange(16000) / 16000
        feats = _audio.log_mel_spectrogram(0.5 * torch.sin(2 * math.pi * f_hz * t)[None])
        assert int(feats[0].mean(dim=1).argmax()) == band


# ---------------------------------------------------------------------- speech commands


def _write_wav(path: pathlib.Path, samples: np.ndarray, rate=16000, channels=1, width=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(samples * 32767, -32768, 32767).astype("<i2")
    if width == 1:
        pcm = (pcm // 256 + 128).astype(np.uint8)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.repeat(pcm, channels).tobytes())


_AMPLITUDE = {"a": 0.5, "b": 0.125, "c": 0.4, "d": 0.3}


def _make_speech(root: pathlib.Path) -> None:
    """yes: 1 s of 400 Hz; no: 0.5 s of 2 kHz (padded); up: 1 s silence then 0.2 s of noise
    (cropped away). Files a (loud) are test, b (quiet) validation, c and d train."""
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    clips = {"yes": lambda a: a * np.sin(2 * np.pi * 400 * t),
             "no": lambda a: a * np.sin(2 * np.pi * 2000 * t[:8000]),
             "up": lambda a: np.concatenate([np.zeros(16000), rng.uniform(-a, a, 3200)])}
    for word, clip in clips.items():
        for name, amplitude in _AMPLITUDE.items():
            _write_wav(root / word / f"{name}.wav", clip(amplitude))
    # not a word: at 8 kHz, so reading it would fail
    _write_wav(root / "_background_noise_" / "noise.wav", rng.uniform(-1, 1, 800), rate=8000)
    (root / "testing_list.txt").write_text("yes/a.wav\nno/a.wav\nup/a.wav\n")
    (root / "validation_list.txt").write_text("yes/b.wav\nno/b.wav\nup/b.wav\n")


def test_speech_commands_splits_features_and_labels(tmp_path):
    _make_speech(tmp_path)
    task = ds.load("speech-commands", root=tmp_path)
    assert task.classes == ("no", "up", "yes")   # word folders, sorted
    assert task.input_shape == (40, 51) and task.x_train.shape == (6, 40, 51)
    assert len(task.y_test) == 3 and sorted(task.y_test.tolist()) == [0, 1, 2]
    assert sorted(task.y_train.tolist()) == [0, 0, 1, 1, 2, 2]
    assert task.x_train.dtype == torch.float32 and task.y_train.dtype == torch.int64
    floor = math.log(1e-6)
    band_400 = _audio.mel_bins()[1:-1].index(12)  # 400 Hz = FFT bin 12, a filter centre
    for x, y in zip(task.x_train, task.y_train, strict=True):
        word = task.classes[int(y)]
        if word == "up":      # cropped to the silent first second
            assert torch.allclose(x, torch.full_like(x, floor), atol=1e-3)
        elif word == "no":    # 0.5 s padded with zeros: late frames silent
            assert x[:, :20].max() > 0 and torch.allclose(x[:, 28:], torch.full_like(
                x[:, 28:], floor), atol=1e-3)
        else:
            assert int(x.mean(dim=1).argmax()) == band_400
    model = create("ds-cnn", input_shape=task.input_shape, num_classes=task.num_classes)
    assert model(task.x_train[:2]).shape == (2, 3)
    assert "testing_list.txt" in task.description and "40 bands x 51 frames" in task.description


def test_speech_commands_words_limits_seed_and_validation_split(tmp_path):
    _make_speech(tmp_path)
    two = ds.load("speech-commands", root=tmp_path, words=["yes", "no"])
    assert two.classes == ("yes", "no") and len(two.y_train) == 4 and len(two.y_test) == 2
    val = ds.load("speech-commands", root=tmp_path, words=["yes", "no"],
                  test_split="validation")
    assert torch.allclose(val.x_train.sum(dim=0), two.x_train.sum(dim=0))  # c and d
    assert val.x_test.max() < two.x_test.max() - 2  # the quiet b files, 12 dB below a
    small = ds.load("speech-commands", root=tmp_path, limit_train=2, limit_test=1)
    assert len(small.y_train) == 2 and len(small.y_test) == 1 and "first 2" in small.description
    same = ds.load("speech-commands", root=tmp_path, limit_train=2, limit_test=1)
    assert torch.equal(small.x_train, same.x_train)
    orders = {tuple(ds.load("speech-commands", root=tmp_path, seed=s).y_train.tolist())
              for s in range(4)}
    assert len(orders) > 1  # the seed shuffles
    with pytest.raises(ValueError, match="'yes'"):
        ds.load("speech-commands", root=tmp_path, words=["yess", "no"])
    with pytest.raises(ValueError, match="at least 2"):
        ds.load("speech-commands", root=tmp_path, words=["yes"])
    with pytest.raises(ValueError, match="'validation'"):
        ds.load("speech-commands", root=tmp_path, test_split="valid")


@pytest.mark.parametrize("kind, rate, channels, width", [
    ("sample rate 8000 Hz", 8000, 1, 2), ("2 channels", 16000, 2, 2),
    ("8-bit", 16000, 1, 1)])
def test_speech_commands_bad_wav_names_the_file(tmp_path, kind, rate, channels, width):
    _make_speech(tmp_path)
    _write_wav(tmp_path / "yes" / "c.wav", np.zeros(1600), rate=rate, channels=channels,
               width=width)
    with pytest.raises(ValueError, match=f"yes.c\\.wav.*{kind}"):
        ds.load("speech-commands", root=tmp_path)
    (tmp_path / "yes" / "c.wav").write_bytes(b"RIFF junk")
    with pytest.raises(ValueError, match="c.wav.*not a readable"):
        ds.load("speech-commands", root=tmp_path)


def test_speech_commands_missing_lists_and_files(tmp_path):
    _make_speech(tmp_path)
    (tmp_path / "testing_list.txt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        ds.load("speech-commands", root=tmp_path)
    msg = str(err.value)
    assert "missing: testing_list.txt" in msg and str(tmp_path) in msg
    assert "Speech Commands" in msg and "root=" in msg and "ODTKIT_DATA_DIR" in msg
    (tmp_path / "testing_list.txt").write_text("yes/a.wav\nyes/zz.wav\n")
    with pytest.raises(ValueError, match="testing_list.txt.*yes/zz.wav"):
        ds.load("speech-commands", root=tmp_path)
