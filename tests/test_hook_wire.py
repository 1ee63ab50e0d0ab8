"""The DDP hook's message format: a fixed binary header written out by hand here, every
compressor through frame/unframe, and peers' malformed messages (a pickle that would create
a file, truncations, flipped bytes, bad lengths, bad values) refused naming the rank."""

from __future__ import annotations

import ast
import pickle
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import odtkit as odt
from odtkit.compress import FrameError, frame, max_frame_bytes, payload_to_bytes, unframe
from odtkit.compress.frame import frame_nbytes
from odtkit.distributed import hook

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"threshold": {"threshold": 0.5}, "powersgd": {"rank_too_large": "dense"}}


def compressed(name: str, seed: int = 0, **kwargs):
    """One bucket's worth: a (6, 5) weight and a (6,) bias through ``name``."""
    c = odt.compress.get(name, seed=seed, **{**SETTINGS.get(name, {}), **kwargs})
    g = torch.Generator().manual_seed(seed)
    grads = {"fc.weight": torch.randn(6, 5, generator=g), "fc.bias": torch.randn(6, generator=g)}
    return c, [c.compress(t, n) for n, t in grads.items()]


def test_header_bytes_written_out_by_hand():
    c, mine = compressed("randomk", k=2)
    (values_w, ctx_w), (values_b, ctx_b) = mine
    seed_w, seed_b = ctx_w.meta["seed"], ctx_b.meta["seed"]

    def entry(seed: int) -> bytes:  # 1 tensor, 2 entries: k (int), seed (int); fp32 (2,)
        return (bytes([1, 2]) + bytes([1]) + b"k" + bytes([0]) + (2).to_bytes(8, "little")
                + bytes([4]) + b"seed" + bytes([0]) + seed.to_bytes(8, "little")
                + bytes([1, 1]) + (2).to_bytes(4, "little"))

    want = (b"ODTF" + bytes([1]) + (2).to_bytes(4, "little") + entry(seed_w) + entry(seed_b)
            + values_w[0].numpy().tobytes() + values_b[0].numpy().tobytes())
    assert frame(mine) == want
    assert len(want) - c.nbytes(values_w) - c.nbytes(values_b) == 9 + 2 * (2 + 11 + 14 + 6)


@pytest.mark.parametrize("name", odt.compress.names())
def test_every_compressor_round_trips_through_a_frame(name):
    c, mine = compressed(name)
    peer_codec, theirs = compressed(name, seed=1)  # another rank: its own seed and values
    got = unframe(frame(theirs), mine, sender=1, fixed_size=c.fixed_size)
    for (payload, ctx), (sent, sent_ctx) in zip(got, theirs, strict=True):
        assert ctx.meta == sent_ctx.meta and ctx.name == sent_ctx.name
        assert payload_to_bytes(payload) == payload_to_bytes(sent)
        assert all(a.dtype == b.dtype and a.shape == b.shape
                   for a, b in zip(payload, sent, strict=True))
        assert torch.equal(c.decompress(payload, ctx), peer_codec.decompress(sent, sent_ctx))
    assert len(frame(theirs)) <= max_frame_bytes(mine, fixed_size=c.fixed_size)
    assert frame_nbytes(theirs) == len(frame(theirs))  # counted without building it


@pytest.mark.parametrize("name", odt.compress.names())
@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(shape=st.lists(st.integers(1, 12), min_size=1, max_size=3), seed=st.integers(0, 99))
def test_frame_nbytes_is_the_frames_length_on_any_shape(name, shape, seed):
    c = odt.compress.get(name, seed=seed, **SETTINGS.get(name, {}))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    compressed = [c.compress(x, "w"), c.compress(x.reshape(-1)[:1], "b")]
    assert frame_nbytes(compressed) == len(frame(compressed))


class _CreatesFile:
    """Unpickling this object runs open(path, "w"): what a hostile peer could send."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_header_is_refused_and_never_executed(tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_CreatesFile(str(control))))  # the payload really is live
    assert control.exists()
    target = tmp_path / "pwned"
    crafted = pickle.dumps([_CreatesFile(str(target))])
    c, mine = compressed("topk", k=3)
    body = b"".join(payload_to_bytes(p) for p, _ in mine)
    old_format = len(crafted).to_bytes(8, "little") + crafted + body  # the former layout
    for image in (old_format, b"ODTF" + crafted, frame(mine)[:9] + crafted):
        with pytest.raises(FrameError, match="malformed message from rank 1"):
            unframe(image, mine, sender=1)
    with pytest.raises(FrameError, match="malformed message from rank 1"):
        run_hook(c, lambda blob: [blob, old_format])
    assert not target.exists()


def test_the_hook_and_the_frame_never_unpickle():
    for path in (ROOT / "odtkit/distributed/hook.py", ROOT / "odtkit/compress/frame.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names} | {getattr(n, "module", None) for n in ast.walk(tree)}
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & {"pickle", "marshal", "dill", "cloudpickle", "shelve"}, path
        assert not attrs & {"loads", "load", "all_gather_object", "broadcast_object_list"}, path


@pytest.mark.parametrize("name", ["topk", "threshold", "powersgd"])
def test_every_truncation_is_refused(name):
    c, mine = compressed(name)
    image = frame(mine)
    for cut in range(len(image)):
        with pytest.raises(FrameError, match="rank 2.*(truncated|bytes)"):
            unframe(image[:cut], mine, sender=2, fixed_size=c.fixed_size)
    with pytest.raises(FrameError, match="rank 2.*padded"):
        unframe(image + b"\0", mine, sender=2, fixed_size=c.fixed_size)


def test_every_flipped_header_byte_is_refused():
    c, mine = compressed("topk", k=3)  # no metadata: every header byte is structural
    image = frame(mine)
    header = len(image) - sum(c.nbytes(p) for p, _ in mine)
    for i in range(header):
        bad = bytearray(image)
        bad[i] ^= 0xFF
        with pytest.raises(FrameError, match="malformed message from rank 3"):
            unframe(bytes(bad), mine, sender=3)


def test_header_fields_are_checked_against_the_local_payload():
    _, mine = compressed("randomk", k=2)
    good = frame(mine)
    cases = {
        "frame version 2": good[:4] + bytes([2]) + good[5:],
        "describes 3 tensors": good[:5] + (3).to_bytes(4, "little") + good[9:],
        "metadata k=2.0": good.replace(bytes([0]) + (2).to_bytes(8, "little"),
                                       bytes([1]) + struct.pack("<d", 2.0), 1),
        "value type 7": good.replace(b"k" + bytes([0]), b"k" + bytes([7]), 1),
        "dtype code 4 and 1 dimensions": good.replace(bytes([1, 1]) + (2).to_bytes(4, "little"),
                                                      bytes([4, 1]) + (2).to_bytes(4, "little"), 1),
        "has shape \\(3,\\), expected \\(2,\\)": good.replace(
            bytes([1, 1]) + (2).to_bytes(4, "little"),
            bytes([1, 1]) + (3).to_bytes(4, "little"), 1),
        "not ASCII": good.replace(b"seed", b"se\xffd", 1),
    }
    for pattern, image in cases.items():
        assert image != good, pattern
        with pytest.raises(FrameError, match=f"rank 1.*{pattern}"):
            unframe(image, mine, sender=1)


def test_variable_payloads_may_not_exceed_the_tensor():
    c, mine = compressed("threshold")
    values = torch.zeros(31)
    index = torch.zeros(31, dtype=torch.uint8)
    bad = [((values, index), mine[0][1]), mine[1]]  # 31 entries for a 30-entry weight
    with pytest.raises(FrameError, match="rank 1.*at most 30 entries"):
        unframe(frame(bad), mine, sender=1, fixed_size=False)


# -- through the hook, with a stand-in bucket and all-gather -----------------------
class Bucket:
    """The parts of torch.distributed.GradBucket the hook reads."""

    def __init__(self, model: nn.Module) -> None:
        self.params = list(model.parameters())

    def gradients(self):
        return [p.grad for p in self.params]

    def parameters(self):
        return self.params

    def is_last(self):
        return True

    def buffer(self):
        return torch.cat([p.grad.reshape(-1) for p in self.params])


def run_hook(codec, images_for):
    """Run the hook as rank 0 of 2 on a Linear(5, 6) with gradients 0..29 (weight) and
    0..5 (bias); the all-gather returns ``images_for(own image)``."""
    model = nn.Linear(5, 6)
    model.weight.grad = torch.arange(30.0).reshape(6, 5)
    model.bias.grad = torch.arange(6.0)
    state = hook.CompressionHookState(codec, {id(model.weight): "fc.weight",
                                             id(model.bias): "fc.bias"}, rank=0, world_size=2)
    original = hook._all_gather_bytes
    hook._all_gather_bytes = lambda blob, group, world, limit: images_for(blob)
    try:
        return state, hook.compression_hook(state, Bucket(model)).value()
    finally:
        hook._all_gather_bytes = original


def test_hook_averages_a_well_formed_peer_and_counts_bytes_per_round():
    c, _ = compressed("topk", k=3)
    _, peer = compressed("topk", seed=5, k=3)
    state, flat = run_hook(c, lambda blob: [blob, frame(peer)])
    own = torch.zeros(36)
    own[[27, 28, 29]] = torch.tensor([27.0, 28.0, 29.0])  # the 3 largest of the weight
    own[[33, 34, 35]] = torch.tensor([3.0, 4.0, 5.0])  # and of the bias
    theirs = torch.zeros(36)
    for offset, ((values, index), _) in zip((0, 30), peer, strict=True):
        theirs[offset + index.long()] = values  # uint8 positions: fewer than 256 entries
    torch.testing.assert_close(flat, (own + theirs) / 2, rtol=0, atol=0)
    assert state.payload_bytes_per_round == [2 * 3 * (4 + 1)]  # fp32 values + uint8 indices
    assert len(frame(peer)) == 2 * 15 + 9 + 2 * (2 + 2 * 6)  # payloads, head, two entries
    # an int64 length, then the frame: sent once, received from the one other rank
    assert state.wire_sent_bytes_per_round == [8 + len(frame(peer))]
    assert state.wire_recv_bytes_per_round == [8 + len(frame(peer))]
    assert state.total_bytes_per_round == [2 * 2 * 3 * (4 + 1)]


@pytest.mark.parametrize("corrupt", ["index", "nan"])
def test_hook_refuses_a_peer_payload_that_does_not_decode(corrupt):
    c, _ = compressed("topk", k=3)
    _, peer = compressed("topk", seed=5, k=3)
    (values, index), ctx = peer[1]  # the bias: 6 entries
    if corrupt == "index":
        index = torch.tensor([0, 1, 200], dtype=torch.uint8)  # position 200 of 6
    else:
        values = torch.tensor([0.5, float("nan"), 1.0])
    peer = [peer[0], ((values, index), ctx)]
    want = "rank 1.*'fc.bias'.*" + ("does not decode" if corrupt == "index" else "non-finite")
    with pytest.raises(FrameError, match=want):
        run_hook(c, lambda blob: [blob, frame(peer)])


def test_announced_lengths_are_bounded_before_anything_is_allocated(monkeypatch):
    class FakeDist:
        @staticmethod
        def all_gather(out, tensor, group=None):
            for t, n in zip(out, (tensor.item(), 2**40), strict=True):
                t.fill_(n)

    monkeypatch.setattr(hook, "dist", FakeDist)
    with pytest.raises(FrameError, match="rank 1: it announces 1099511627776 bytes.*1 to 100"):
        hook._all_gather_bytes(b"x" * 50, None, 2, 100)
