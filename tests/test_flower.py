"""The Flower bridge: the client mod and the strategy driven by hand against odtkit's
compressors used directly, and one real Flower run (its simulation engine, Ray, on
127.0.0.1) against the in-process ``federated()`` for the same seeds and compressor."""

from __future__ import annotations

import copy
import sys
from importlib.util import find_spec

import pytest
import torch

import odtkit as odt
from odtkit.distributed import federated as fl
from odtkit.distributed import flower

needs_flower = pytest.mark.skipif(
    find_spec("flwr") is None, reason='Flower is not installed: pip install "odtkit[flower]"')


@pytest.fixture(scope="module")
def small(task):
    return odt.models.create("mlp", input_shape=task.input_shape, num_classes=10, seed=0)


def test_without_flower_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr", None)  # import flwr now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "odtkit\[flower\]"'):
        flower.require_flower()
    with pytest.raises(ImportError, match=r'pip install "odtkit\[flower\]"'):
        flower.compression_mod  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'compression_modd'"):
        flower.compression_modd  # noqa: B018


# ------------------------------------------------------------------------- by hand

def _train_message(glob, server_round):
    """A train instruction as a ClientApp receives it (metadata as the SuperLink sets it)."""
    import time

    from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

    content = RecordDict({"arrays": ArrayRecord(torch_state_dict=glob),
                          "config": ConfigRecord({"server-round": server_round})})
    meta = Metadata(run_id=1, message_id=f"m{server_round}", src_node_id=0, dst_node_id=1,
                    reply_to_message_id="", group_id=str(server_round), created_at=time.time(),
                    ttl=3600.0, message_type="train")
    return Message(metadata=meta, content=content)


def _reply_with(local, examples):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    def call_next(msg, context):
        return Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=local),
                                   "metrics": MetricRecord({"num-examples": examples})}),
                       reply_to=msg)
    return call_next


@needs_flower
def test_mod_and_strategy_match_the_compressors_used_directly(small):
    """Two clients, two rounds, top-k 5% with error feedback: what the strategy adds to the
    global model is the sample-weighted mean of what each client's own compressor (seed
    seed + k, residual carried over) decodes; the bytes are its payloads' bytes."""
    from flwr.app import Context, RecordDict

    kw = dict(compressor="topk", density=0.05, error_feedback=True, seed=7)
    mod = flower.compression_mod(kw["compressor"], error_feedback=True, seed=7, density=0.05)
    strategy = flower.CompressedFedAvg(model=small, clients=2, compressor="topk",
                                       error_feedback=True, seed=7,
                                       compressor_kwargs={"density": 0.05})
    contexts = [Context(run_id=1, node_id=k + 1, node_config={"partition-id": k},
                        state=RecordDict(), run_config={}) for k in range(2)]
    direct = [odt.compress.get("topk", density=0.05, error_feedback=True, seed=7 + k)
              for k in range(2)]
    examples, gen = [30, 10], torch.Generator().manual_seed(0)
    glob = {k: v.clone() for k, v in small.state_dict().items()}
    for server_round in (1, 2):
        msg = _train_message(glob, server_round)
        locals_ = [{k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in glob.items()}
                   for _ in range(2)]
        replies = [mod(msg, contexts[k], _reply_with(locals_[k], examples[k])) for k in range(2)]
        strategy.global_arrays = msg.content["arrays"].to_torch_state_dict()
        arrays, _ = strategy.aggregate_train(server_round, replies)
        sent, expected = 0, {}
        for name in glob:
            decoded = []
            for k in range(2):
                payload, ctx = direct[k].compress(locals_[k][name] - glob[name], name)
                sent += direct[k].nbytes(payload)
                decoded.append(direct[k].decompress(payload, ctx).double())
            mean = (examples[0] * decoded[0] + examples[1] * decoded[1]) / sum(examples)
            expected[name] = glob[name] + mean.float()
        got = arrays.to_torch_state_dict()
        for name in glob:
            assert torch.allclose(got[name], expected[name], rtol=0, atol=1e-7), name
        assert strategy.history.up_bytes_per_round[-1] == sent
        glob = got
    assert strategy.history.chosen == [(0, 1), (0, 1)]


@needs_flower
def test_payload_arrays_refuse_what_is_not_a_payload(small):
    from flwr.app import Array, ArrayRecord, ConfigRecord

    codec = odt.compress.get("topk", density=0.1)
    glob = small.state_dict()
    arrays, contexts, sent = flower.encode_update(codec, glob, glob)
    assert sent == sum(len(a.data) for k, a in arrays.items() if "|" in k)
    forged = ArrayRecord(array_dict={**dict(arrays.items()), "1.bias|0": Array(
        dtype="object", shape=(1,), stype="odtkit.raw", data=b"\0" * 8)})
    with pytest.raises(ValueError, match="'1.bias' is not an odtkit payload tensor"):
        flower.decode_update(codec, forged, contexts, glob)
    with pytest.raises(ValueError, match=r"8 bytes; its dtype float32 and shape \(7,\) need 28"):
        flower.decode_update(codec, ArrayRecord(array_dict={
            **dict(arrays.items()), "1.bias|0": Array(dtype="float32", shape=(7,),
                                                      stype="odtkit.raw", data=b"\0" * 8)}),
            contexts, glob)
    assert isinstance(contexts, ConfigRecord)
    with pytest.raises(ValueError, match="clients must be a positive integer, got clients=0"):
        flower.CompressedFedAvg(model=small, clients=0)
    with pytest.raises(ValueError, match="Did you mean"):
        flower.compression_mod("topkk", density=0.1)


# ------------------------------------------------------------------------- a real run

@needs_flower
@pytest.mark.flower
def test_a_flower_run_agrees_with_federated(task, small, monkeypatch):
    """4 clients, 3 rounds, DGC (warm-up over 2 rounds, so its density changes between
    rounds) on two device types over BLE: Flower's simulation engine and ``federated()``
    give the same final weights (float tolerance), bytes, round times and accuracies."""
    # Ray on 2 busy cores: its agents get longer to register (a start that fails anyway, as
    # when the metrics agent misses the raylet's start-up deadline, flower.run retries)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_agent_register_timeout_ms", "180000")
    kw = dict(clients=4, rounds=3, lr=0.1, alpha=1.0, seed=5, compressor="dgc",
              density=0.05, warmup_epochs=2, devices=("nrf52840", "jetson-nano"), link="ble")
    ours = fl.federated(copy.deepcopy(small), task, fraction=1.0, **kw)
    theirs = flower.run(copy.deepcopy(small), task, **kw)
    for a, b in zip(ours.model.parameters(), theirs.model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    assert theirs.up_bytes_per_round == ours.up_bytes_per_round
    assert ours.up_bytes_per_round[0] > ours.up_bytes_per_round[-1]  # the warm-up ran
    assert theirs.down_bytes_per_round == ours.down_bytes_per_round
    assert theirs.time_s_per_round == pytest.approx(ours.time_s_per_round, rel=1e-12)
    assert theirs.test_acc == pytest.approx(ours.test_acc, abs=1e-9)
    assert theirs.chosen == ours.chosen and theirs.devices == ours.devices


@needs_flower
def test_norm_statistics_travel_as_values():
    """BatchNorm's running statistics and counter are not updates: they go uncompressed and
    come back as the client's values; the weights go through the compressor."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    net(torch.randn(8, 4))  # one training-mode forward: the statistics move
    glob = {k: v.clone() for k, v in net.state_dict().items()}
    local = {k: (v + 1 if v.is_floating_point() else v + 2) for k, v in glob.items()}
    codec = odt.compress.get("fp16")
    arrays, contexts, sent = flower.encode_update(codec, local, glob)
    assert sent == 2 * (12 + 3 + 3 + 3)  # fp16 updates of the weights, biases, BN affine
    updates, values, received = flower.decode_update(codec, arrays, contexts, glob)
    assert received == sent
    assert set(values) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    for key, value in values.items():
        assert torch.equal(value, local[key])
    for key, update in updates.items():
        assert torch.equal(update, torch.ones_like(glob[key]))
