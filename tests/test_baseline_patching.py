"""Path-patching invariants on tiny random GPT-2 bridges (property tests with hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clt_bench.baseline.circuits import Circuit, all_nodes
from clt_bench.baseline.faithfulness import patch_circuits
from clt_bench.baseline.patching import (
    PatchContext,
    Receiver,
    Sender,
    all_senders,
    path_patch,
    resid_patch,
    upstream,
)
from clt_bench.baseline.readout import EndReadout, readout_from_resid
from clt_bench.task.dataset import TaskBatch, build_dataset

N_LAYERS, N_HEADS = 3, 2
SETTINGS = settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def per_example_logit_diff(readout: EndReadout, batch: TaskBatch) -> torch.Tensor:
    """[..., n] logit difference (sum variant) per prompt of ``batch``."""
    if batch.relation == "exact":
        return batch.logit_diff(readout.answer_logits)
    good = batch.correct().double()
    return (readout.answer_logits * (2 * good - 1)).sum(-1)


@pytest.fixture(scope="module")
def ctx(task_spec, tokenizer) -> PatchContext:
    from helpers import tiny_bridge

    bridge = tiny_bridge(n_layer=N_LAYERS, n_head=N_HEADS, n_embd=32, seed=3)
    for p in bridge.parameters():
        p.requires_grad_(False)
    batch = build_dataset(task_spec, tokenizer, "discovery", n=6, seed=1)
    return PatchContext.build(bridge, batch, "clean", rows=64)


def _close(a, b, tol: float = 1e-4) -> None:
    assert torch.allclose(a.answer_logits, b.answer_logits, atol=tol)
    assert torch.allclose(a.lse, b.lse, atol=tol)


def _sender(data, ctx: PatchContext) -> Sender:
    pos = data.draw(st.sampled_from([ctx.end_pos, ctx.yy_pos]))
    layer = data.draw(st.integers(0, N_LAYERS - 1))
    if data.draw(st.booleans()):
        return Sender("head", layer, pos, data.draw(st.integers(0, N_HEADS - 1)))
    return Sender("mlp", layer, pos)


def _receiver(data, ctx: PatchContext) -> Receiver:
    pos = data.draw(st.sampled_from([ctx.end_pos, ctx.yy_pos]))
    kind = data.draw(st.sampled_from(["head", "mlp", "logits"]))
    if kind == "logits":
        return Receiver("logits", N_LAYERS, ctx.end_pos)
    layer = data.draw(st.integers(0, N_LAYERS - 1))
    if kind == "mlp":
        return Receiver("mlp", layer, pos)
    return Receiver(
        "head",
        layer,
        pos,
        data.draw(st.integers(0, N_HEADS - 1)),
        data.draw(st.sampled_from("qkv")),
    )


@SETTINGS
@given(data=st.data())
def test_no_path_gives_clean(ctx, data):
    senders = [_sender(data, ctx) for _ in range(data.draw(st.integers(1, 3)))]
    r = path_patch(ctx, senders, [])
    for i in range(len(senders)):
        _close(r[i], ctx.base.readout, 0)
    receivers = [_receiver(data, ctx) for _ in range(2)]
    assert path_patch(ctx, [], receivers).lse.shape[0] == 0


def test_every_path_from_input_gives_corrupted(ctx):
    yy = ctx.yy_pos
    receivers = [
        Receiver("head", lay, yy, h, c)
        for lay in range(N_LAYERS)
        for h in range(N_HEADS)
        for c in "qkv"
    ]
    receivers += [Receiver("mlp", lay, yy) for lay in range(N_LAYERS)]
    receivers.append(Receiver("logits", N_LAYERS, ctx.end_pos))
    r = path_patch(ctx, [Sender("embed", 0, yy)], receivers)
    _close(r[0], ctx.source.readout)


@SETTINGS
@given(data=st.data())
def test_path_through_non_downstream_component_changes_nothing(ctx, data):
    s = _sender(data, ctx)
    r = _receiver(data, ctx)
    if upstream(s, r):
        # move the receiver before the sender, or to the other position
        other = ctx.yy_pos if s.pos == ctx.end_pos else ctx.end_pos
        r = (
            Receiver("mlp", s.layer - 1, s.pos)
            if s.layer > 0 and data.draw(st.booleans())
            else Receiver("mlp", N_LAYERS - 1, other)
        )
    assert not upstream(s, r)
    _close(path_patch(ctx, [s], [r])[0], ctx.base.readout)


def test_direct_paths_add_up_to_linear_decomposition(ctx):
    """Frozen final LN: the direct logit-diff effects of every writer at END (embedding, heads,
    MLPs) sum to the corrupted-minus-clean logit diff of the final residual stream."""
    end = ctx.end_pos
    senders = [Sender("embed", 0, end), *all_senders(N_LAYERS, N_HEADS, [end])]
    r = path_patch(ctx, senders, [Receiver("logits", N_LAYERS, end)], freeze_ln=True)
    base = per_example_logit_diff(ctx.base.readout, ctx.batch)
    parts = per_example_logit_diff(r, ctx.batch) - base  # [S, n]
    ln = ctx.bridge.ln_final.original_component
    x = ctx.source.final[:, end]
    x = (x - x.mean(-1, keepdim=True)) / ctx.base.final_scale[:, end] * ln.weight + ln.bias
    total = (
        per_example_logit_diff(
            readout_from_resid(x, ctx.bridge.W_U, ctx.bridge.b_U, ctx.batch.answer_ids),
            ctx.batch,
        )
        - base
    )
    assert torch.allclose(parts.sum(0), total, atol=1e-3, rtol=1e-4)


@SETTINGS
@given(data=st.data())
def test_senders_are_batched_consistently(ctx, data):
    """A sender's result does not depend on which other senders share its forward pass."""
    senders = [_sender(data, ctx) for _ in range(3)]
    receivers = [_receiver(data, ctx) for _ in range(2)]
    together = path_patch(ctx, senders, receivers)
    alone = path_patch(ctx, senders[1:2], receivers)
    _close(together[1], alone[0])


def test_circuit_patching_extremes(ctx):
    """No circuit = corrupted run; knocking out no node = clean run; resid patch of 0 = clean."""
    empty = Circuit("empty", ())
    _close(patch_circuits(ctx, [empty], complement=True)[0], ctx.source.readout)
    _close(patch_circuits(ctx, [empty], complement=False)[0], ctx.base.readout)
    everything = Circuit("all", tuple(all_nodes(N_LAYERS, N_HEADS)))
    _close(
        patch_circuits(ctx, [everything], complement=False)[0],
        patch_circuits(ctx, [empty], complement=True)[0],
    )
    zero = torch.zeros(1, ctx.n, 32)
    for layer in (0, N_LAYERS - 1):
        _close(resid_patch(ctx, layer, ctx.end_pos, zero)[0], ctx.base.readout)
