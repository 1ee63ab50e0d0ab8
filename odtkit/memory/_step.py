"""Play one training step over a trace, without data: what lives when, in bytes.

Forward: every op's outputs appear; a tensor dies when the model's Python code lets go of
it (the trace saw when) unless a backward node keeps it (the rules say which).
Backward: nodes run in reverse creation order (as autograd's CPU queue does); each
allocates its input gradients, then drops its output gradients and what it kept.
Gradients reaching a parameter stay as ``.grad``; two reaching one tensor are summed,
in place when the first is not shared. Then the optimizer allocates its state.
A recomputed (checkpointed) block keeps only its inputs in forward; its first backward
node recomputes the block's forward, which brings back everything the block keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._casts import cached_casts, gradient_bytes
from ._fused import fused_calls
from ._grads import backward_macs_of, input_grads, needs_grad
from ._measure import StepBytes
from ._peak import LiveParts, PartsTimeline, at_peak
from ._rules import rules_of
from ._scratch import scratch_of
from ._sparse import hooked_params, sparse_rules
from ._trace import Trace
from ._update import play_optimizer, scale_loss


@dataclass(frozen=True)
class StepModel(StepBytes):
    """The simulated step: bytes per category, peak, per-row saved bytes, the timeline."""

    row_saved_bytes: tuple[int, ...]
    allocator_peak_bytes: int  # the peak with every op's scratch (``_scratch``)
    row_trainable: tuple[bool, ...]
    checkpoint_rows: tuple[tuple[str, int], ...]  # (block, bytes of inputs it keeps)
    timeline: tuple[tuple[str, int], ...]
    peak_components: dict[str, int]  # what is live at the peak (``_peak``)
    peak_at: str  # where the peak is, e.g. "backward of conv1 (convolution_backward)"


class _Step:
    """The state of one simulated step; ``run`` goes through it in order."""

    def __init__(self, t: Trace, trainable: frozenset[str], engine: str, optimizer: str,
                 recompute: tuple[str, ...], fp8: bool = False, scaler: bool = False,
                 channels: tuple = (), activation_grad: str = "exact") -> None:
        self.t, self.trainable, self.optimizer, self.fp8 = t, trainable, optimizer, fp8
        self.scaler = scaler
        self.rules = sparse_rules(t, rules_of(t, engine, fp8, activation_grad), channels, engine)
        self.hooked = {t.param_value[n] for n in hooked_params(t, channels, engine)
                       if n in t.param_value}
        self.masked = {t.param_value.get(n) for n, _, _ in channels}  # a group of their own
        self.params = {v: name for name, v in t.param_value.items()}
        self.rg = bytearray(len(t.value_storage))
        for name, v in t.param_value.items():
            self.rg[v] = name in trainable
        self.sbytes = list(t.storage_bytes)
        self.nodes: list[tuple[int, tuple[bool, ...], tuple[int, ...]]] = []
        self.created_at: dict[int, list[int]] = {}  # op -> storages made only to be kept
        self.saved_by: dict[int, int] = {}  # storage -> holders (nodes, checkpoints)
        self.block_of: dict[int, int] = {}  # op -> index of its recomputed block
        self.blocks = [s for s in t.spans if s[0] in set(recompute)]
        for b, (_, first, end, _) in enumerate(self.blocks):
            self.block_of.update(dict.fromkeys(range(first, end), b))
        self.block_kept: list[dict[int, int]] = [{} for _ in self.blocks]  # storage -> nodes
        self.row_saved = [0] * len(t.layers)
        self.checkpoint_rows: list[tuple[str, int]] = []
        self.activations = 0
        self.counted: set[int] = set()  # storages already counted as activations
        self.live = 0
        self.parts = LiveParts(sum(b for b, k in zip(t.storage_bytes, t.storage_kind, strict=True)
                                   if k in ("param", "buffer")))
        self.timeline = PartsTimeline(self.parts)
        self.first_kept: dict[int, list[int]] = {}  # op -> storages it is the first to keep
        self.alloc_peak = 0  # live bytes with each op's scratch (kernel scratch probed)
        self.scratch: dict[int, tuple[int, int]] = {}

    def _is_act(self, s: int) -> bool:
        return s >= len(self.t.storage_kind) or self.t.storage_kind[s] in ("act", "input")

    def _keep(self, s: int, op_index: int, row: int) -> None:
        """One more holder of storage ``s``; count it once as activation memory."""
        if s not in self.counted and op_index < self.t.n_forward:
            self.counted.add(s)
            self.activations += self.sbytes[s]  # the loss's own saves are not the model's
            if row >= 0:
                self.row_saved[row] += self.sbytes[s]
        if s not in self.saved_by:
            self.first_kept.setdefault(op_index, []).append(s)
        self.saved_by[s] = self.saved_by.get(s, 0) + 1

    # ------------------------------------------------------------ which ops keep what
    def plan_nodes(self) -> None:
        t, rg, vs = self.t, self.rg, self.t.value_storage
        ends = {end: b for b, (_, _, end, _) in enumerate(self.blocks)}
        for i, (op, rule) in enumerate(zip(t.ops, self.rules, strict=True)):
            if i in ends:
                self._checkpoint(ends[i])
            if not rule.differentiable:
                continue
            flags = tuple(needs_grad(x, rg) for x in op.ins)
            if not any(flags):
                continue
            for o in op.outs:
                rg[o] = t.value_float[o]
            kept = []
            for item in rule.saves(op, flags, t):
                if isinstance(item, tuple):  # ("new", bytes): made by this op only to keep
                    self.sbytes.append(item[1])
                    self.created_at.setdefault(i, []).append(len(self.sbytes) - 1)
                    kept.append(len(self.sbytes) - 1)
                    continue
                if item.startswith("k:"):  # a tensor keyword argument, by name
                    v = dict(op.kw_ins).get(item[2:])
                else:
                    v = (op.ins if item[0] == "i" else op.outs)[int(item[1:])]
                if v is not None:
                    kept.append(vs[v])
            kept_act = tuple(s for s in dict.fromkeys(kept) if self._is_act(s))
            block = self.block_of.get(i)
            for s in kept_act:
                if block is None:
                    self._keep(s, i, t.op_layer[i])
                else:  # kept only once the block is recomputed in backward
                    self.block_kept[block][s] = self.block_kept[block].get(s, 0) + 1
            self.nodes.append((i, flags, kept_act))
        if len(t.ops) in ends:
            self._checkpoint(ends[len(t.ops)])

    def _checkpoint(self, block: int) -> None:
        """The checkpoint saves the block's inputs; they stay if the block made a graph."""
        name, first, end, inputs = self.blocks[block]
        graph = any(first <= i < end for i, _, _ in self.nodes)
        nbytes = 0
        for s in dict.fromkeys(self.t.value_storage[v] for v in inputs):
            if not self._is_act(s):
                continue
            if s not in self.counted:
                self.counted.add(s)
                nbytes += self.sbytes[s]
            if graph:
                if s not in self.saved_by:
                    self.first_kept.setdefault(end, []).append(s)
                self.saved_by[s] = self.saved_by.get(s, 0) + 1
        self.activations += nbytes
        self.checkpoint_rows.append((name, nbytes))

    # ------------------------------------------------------------ forward and loss
    def forward(self) -> list[int]:
        """Live bytes through forward and loss; returns each block's recompute transient."""
        t, sbytes = self.t, self.sbytes
        self.live = sum(b for b, k in zip(t.storage_bytes, t.storage_kind, strict=True)
                        if k != "act")
        node_flags = {i: flags for i, flags, _ in self.nodes}
        rec_peak = [0] * len(self.blocks)
        start = dead_kept = 0
        skipped_all: set[int] = set()  # storages never allocated for real
        cached = cached_casts(t, {v for v in self.params if self.rg[v]}, self.params)
        op_ends, freed_within = fused_calls(t, node_flags)

        def free(s: int, block: int | None) -> None:
            nonlocal dead_kept
            if (s not in self.saved_by and s not in t.held and s not in skipped_all
                    and s not in cached):
                self.live -= sbytes[s]
                if block is not None and s in self.block_kept[block]:
                    dead_kept += sbytes[s]

        for i, op in enumerate(t.ops):
            block = self.block_of.get(i)
            if block is not None and i == self.blocks[block][1]:
                start, dead_kept = self.live, 0
            made = op.new + tuple(self.created_at.get(i, ()))
            skipped = self.rules[i].skipped_without_grad if i not in node_flags else ()
            skipped_all.update(t.value_storage[op.outs[k]] for k in skipped)
            made = tuple(s for s in made if s not in skipped_all)
            self.live += sum(sbytes[s] for s in made)
            self.parts.op = i
            for s in self.first_kept.get(i, ()):  # from now on a backward node holds it
                if s not in skipped_all:
                    self.parts.save(s, sbytes[s])
            extra = self.rules[i].fwd_extra(op, node_flags[i], t) if i in node_flags else 0
            scratch = self.scratch.get(i, (0, 0))[0]
            if i in node_flags:
                scratch = max(scratch, self.rules[i].fwd_scratch(op, node_flags[i], t))
            self.alloc_peak = max(self.alloc_peak, self.live + max(extra, scratch))
            if block is not None:  # recomputing, the block's kept tensors would all be alive
                rec_peak[block] = max(rec_peak[block], self.live + extra + dead_kept - start)
            dying = list(t.dies_after[i])
            if block is not None:  # kept under a checkpoint: dropped as soon as made
                dying += self.created_at.get(i, ())
            if i in op_ends:  # a measured step reads the live bytes as a top-level op ends
                for s in dying:
                    if s in freed_within:
                        free(s, block)
                dying = [s for s in dying if s not in freed_within]
            if i in op_ends or extra:
                self.timeline.append((f"{op.phase}: {op.name}", self.live + extra))
            for s in dying:
                free(s, block)
        logits = t.value_storage[t.logits_value]
        if logits not in self.saved_by:  # the caller lets go of the logits once the loss is known
            self.live -= sbytes[logits]
        # autocast clears its cache as it exits: copies no backward node keeps go
        self.live -= sum(sbytes[s] for s in cached if s not in self.saved_by)
        return rec_peak

    # ------------------------------------------------------------ backward
    def backward(self, rec_peak: list[int]) -> dict[int, int]:
        """Live bytes through backward; returns parameter value -> gradient storage."""
        t, sbytes, vbytes = self.t, self.sbytes, self.t.value_bytes
        logits = t.value_storage[t.logits_value]
        grad_bytes: list[int] = []  # gradient storage -> bytes
        refs: list[int] = []  # gradient storage -> buffers referring to it
        kept_grads: set[int] = set()  # gradient storages that became some parameter's .grad
        param_grad: dict[int, int] = {}  # parameter value -> gradient storage
        buffers: dict[int, int] = {}  # value -> gradient storage waiting for its producer
        arrived: dict[int, int] = {}  # parameter value -> gradients that reached it

        def alloc(nbytes: int) -> int:
            grad_bytes.append(nbytes)
            refs.append(1)
            self.live += nbytes
            return len(grad_bytes) - 1

        def drop(g: int) -> None:
            refs[g] -= 1
            if refs[g] == 0 and g not in kept_grads:
                self.live -= grad_bytes[g]

        def release(s: int) -> None:
            self.saved_by[s] -= 1
            if self.saved_by[s] == 0:
                self.parts.unsave(s, sbytes[s])
                if s not in t.held or s == logits:
                    self.live -= sbytes[s]

        def keep_grad(v: int, g: int) -> None:  # g becomes the .grad of parameter v
            param_grad[v] = g
            kept_grads.add(g)
            self.parts.grads += grad_bytes[g]

        def route(v: int, g: int) -> None:
            if v in self.hooked:  # a lean mask hook: the gradient masked in a clone
                self.timeline.append(("backward: clone", self.live + vbytes[v]))
            if v in self.params:  # AccumulateGrad steals the gradient unless it is shared
                arrived[v] = arrived.get(v, 0) + 1
                if v in param_grad and arrived[v] == 2:
                    # a parameter used more than once (an RNN's weights at every step):
                    # its input buffer sums the first two gradients out of place, the
                    # later ones in place (as torch's measured step does)
                    old = param_grad[v]
                    keep_grad(v, alloc(vbytes[v]))
                    self.timeline.append(("backward: add", self.live))
                    kept_grads.discard(old)
                    self.parts.grads -= grad_bytes[old]
                    drop(old)
                    drop(g)
                elif v in param_grad:
                    drop(g)
                elif refs[g] > 1:
                    keep_grad(v, alloc(vbytes[v]))
                    drop(g)
                else:
                    keep_grad(v, g)
                return
            old = buffers.get(v)
            if old is None:
                buffers[v] = g
            elif refs[old] == 1:  # summed into the first gradient in place
                drop(g)
            else:
                buffers[v] = alloc(vbytes[v])
                drop(old)
                drop(g)

        root = None  # the gradient backward() starts from: the graph root holds it to the end
        loss_bytes = vbytes[t.loss_value]
        if self.nodes:
            if self.scaler:  # backward starts from the scaled loss, which hands on a fresh one
                self.live = scale_loss(self.live, self.timeline, loss_bytes,
                                       self.parts.add_state)
            root = alloc(loss_bytes)
            if self.scaler:  # the scaled loss's backward hands the loss a fresh gradient
                buffers[t.loss_value] = alloc(loss_bytes)
                self.timeline.append(("backward: mul", self.live))
            else:  # the first node gets the root gradient itself
                refs[root] += 1
                buffers[t.loss_value] = root
        recomputed: set[int] = set()
        first_node = {}  # block -> its earliest node, after which the checkpoint lets go
        for i, _, _ in self.nodes:
            if i in self.block_of:
                first_node.setdefault(self.block_of[i], i)
        for i, flags, kept in reversed(self.nodes):
            op, rule = t.ops[i], self.rules[i]
            block, self.parts.op = self.block_of.get(i), i
            if block is not None and block not in recomputed:
                recomputed.add(block)
                self._recompute(block, rec_peak[block])
            outs = [buffers.pop(o) for o in op.outs if o in buffers]
            made: list[tuple[int, int]] = []
            if outs:
                made = input_grads(op, rule, flags, outs[0], self.rg, t, alloc, refs)
                extra = rule.bwd_extra(op, flags, t)
                self.timeline.append((f"backward: {op.name}", self.live + extra))
                scratch = max(self.scratch.get(i, (0, 0))[1], rule.bwd_scratch(op, flags, t))
                self.alloc_peak = max(self.alloc_peak, self.live + max(extra, scratch))
                for g in outs:
                    drop(g)
            for s in kept:
                release(s)
            if block is not None and first_node[block] == i:  # the checkpoint lets go
                for s in dict.fromkeys(t.value_storage[v] for v in self.blocks[block][3]):
                    if self._is_act(s):
                        release(s)
            for v, g in made:
                route(v, g)
        for g in buffers.values():  # gradients nobody consumed (dead branches)
            drop(g)
        if root is not None:
            drop(root)
            self.live -= loss_bytes * self.scaler  # the scaled loss
        self.live -= sum(sbytes[s] for s, n in self.saved_by.items()
                         if n and (s not in t.held or s == logits))
        self.parts.clear_saved()  # the graph is freed: nothing is held for backward
        if t.storage_kind[t.value_storage[t.loss_value]] == "act":
            self.live -= vbytes[t.loss_value]  # the caller drops the loss after backward
        if self.nodes:
            self.timeline.append(("backward: done", self.live))
        return param_grad

    def _recompute(self, block: int, transient: int) -> None:
        """The block's forward runs again: what its nodes keep comes back to life."""
        self.timeline.append((f"backward: recompute {self.blocks[block][0]}",
                              self.live + transient))
        for s, n in self.block_kept[block].items():
            if not self.saved_by.get(s):
                self.live += self.sbytes[s]
                self.parts.save(s, self.sbytes[s])
            self.saved_by[s] = self.saved_by.get(s, 0) + n

    # ------------------------------------------------------------ optimizer step
    def step(self, param_grad: dict[int, int]) -> int:
        """The optimizer's step (``_update.play_optimizer``); returns the state's bytes."""
        self.parts.op = -1
        self.live, state = play_optimizer(self.t, param_grad, self.masked, self.optimizer,
                                          self.scaler, self.live, self.timeline,
                                          self.parts.add_state)
        return state

    def run(self) -> StepModel:
        t = self.t
        self.plan_nodes()
        self.scratch = scratch_of(t, {i: flags for i, flags, _ in self.nodes})
        param_grad = self.backward(self.forward())
        state = self.step(param_grad)
        kinds = zip(t.storage_bytes, t.storage_kind, strict=True)
        frozen = sum(t.value_bytes[v] for v, n in self.params.items() if n not in self.trainable)
        frozen += sum(b for s, (b, k) in enumerate(kinds)
                      if k == "buffer" and s not in t.written_buffers)
        components, peak_at = at_peak(self.timeline, [
            t.layers[r].name if r >= 0 else "the loss" for r in t.op_layer])
        return StepModel(
            weights_bytes=self.parts.weights,
            gradients_bytes=gradient_bytes(t, param_grad, self.fp8), optimizer_bytes=state,
            activations_bytes=self.activations, peak_bytes=max(b for _, b in self.timeline),
            frozen_weight_bytes=frozen, backward_macs=backward_macs_of(t, self.rg, self.trainable),
            row_saved_bytes=tuple(self.row_saved),
            allocator_peak_bytes=max(self.alloc_peak, *(b for _, b in self.timeline)),
            row_trainable=tuple(any(n in self.trainable for n in r.param_names)
                                for r in t.layers),
            checkpoint_rows=tuple(self.checkpoint_rows), timeline=tuple(self.timeline),
            peak_components=components, peak_at=peak_at)


def play_step(trace: Trace, trainable: frozenset[str], engine: str, optimizer: str,
             recompute: tuple[str, ...] = (), fp8: bool = False,
             scaler: bool = False, channels: tuple = (),
             activation_grad: str = "exact") -> StepModel:
    """Simulate forward, loss, backward and one ``optimizer`` step under a plan.

    ``recompute``: names of the modules checkpointed (recomputed in backward). ``fp8``:
    the step runs under ``fp8_autocast`` (conv/linear keep 1-byte copies, see _rules).
    A trace made under autocast plays its casts and autocast's weight cache; ``scaler``:
    a ``torch.amp.GradScaler`` scales the loss and wraps the optimizer step (fp16).
    ``channels``: the plan's channel-sparse entries (what the lean engine keeps, _sparse).
    ``activation_grad``: the plan's, for the lean engine's smooth activations.
    """
    return _Step(trace, trainable, engine, optimizer, recompute, fp8, scaler, channels,
                 activation_grad).run()
