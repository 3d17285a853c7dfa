"""Path-level faithfulness (Hanna et al.'s paths) against hand-built references on a tiny model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import tiny_bridge

from clt_bench.baseline.circuits import load_circuit, make_circuit
from clt_bench.baseline.patching import PatchContext, split_qkv
from clt_bench.baseline.path_faithfulness import EMBED, LOGITS, hanna_paths, paths_readout
from clt_bench.baseline.readout import per_example_pd, readout_from_logits
from clt_bench.task.dataset import build_dataset


@pytest.fixture(scope="module")
def ctx(tokenizer, task_spec):
    bridge = tiny_bridge(n_layer=2, n_head=2, n_embd=32, seed=4)
    for p in bridge.parameters():
        p.requires_grad_(False)
    batch = build_dataset(task_spec, tokenizer, "discovery").subset(list(range(10)))
    # most probability mass on the answers and strong heads, so that path effects are not ~1e-7
    bridge.unembed.original_component.bias[batch.answer_ids] += 20.0
    with torch.no_grad():
        for block in bridge.original_model.transformer.h:
            block.attn.c_attn.weight.mul_(8.0)
            block.attn.c_proj.weight.mul_(30.0)
            block.mlp.c_proj.weight.mul_(10.0)
    return PatchContext.build(bridge, batch, "clean", rows=256)


def _pd(ctx, readout):
    return per_example_pd(readout, ctx.batch)


def test_hanna_structure():
    spec = hanna_paths(load_circuit("hanna2023"), ["0.3", "0.5"])
    e = spec.edges
    assert ("a0.h1@YY", "mlp1@YY") in e and ("a0.h3@YY", "mlp1@YY") not in e
    assert ("a0.h3@YY", "a5.h1@END:k") in e and ("mlp3@YY", "a9.h1@END:v") in e
    assert ("a5.h1@END", "mlp8@END") in e and ("mlp8@END", "mlp10@END") in e
    assert ("mlp10@END", "mlp8@END") not in e and ("a9.h1@END", LOGITS) in e
    heads = {n.label for n in load_circuit("hanna2023").nodes if n.kind == "head"}
    assert not any(
        s in heads and r.split(":")[0] in heads and s != EMBED
        for s, r in e
        if r.split(":")[0] in heads and not r.endswith(("k", "v"))
    ), "head -> head"
    assert not any(s.endswith("@END") and r.endswith((":k", ":v")) for s, r in e)
    assert spec.clean_queries == {
        n.label for n in load_circuit("hanna2023").at("END") if n.kind == "head"
    }
    assert (EMBED, "mlp0@YY") in e and (EMBED, "a0.h1@YY:qkv") in e


def test_no_paths_is_the_corrupted_run(ctx):
    circuit = make_circuit("mlps", {"END": ["mlp0", "mlp1"]})  # nothing reaches them
    got = _pd(ctx, paths_readout(ctx, hanna_paths(circuit)))
    assert torch.allclose(got, _pd(ctx, ctx.source.readout), atol=1e-6)


def test_clean_query_head_matches_a_hand_built_run(ctx):
    """{a1.h0@END}: its query clean, keys/values corrupted, its END write added to the logits."""
    b = ctx.bridge
    got = _pd(ctx, paths_readout(ctx, hanna_paths(make_circuit("h", {"END": ["1.0"]}))))
    end = ctx.end_pos
    store = {}

    def q_in(x, hook):
        x = x.clone()
        x[:, end, 0] = ctx.base.resid_pre[1][:, end]
        return x

    def keep(z, hook):
        store["z"] = z[:, end, 0]
        return z

    with split_qkv(b):
        b.run_with_hooks(
            ctx.batch.corrupted,
            fwd_hooks=[("blocks.1.attn.hook_q_input", q_in), ("blocks.1.attn.hook_z", keep)],
        )
    x = ctx.source.final[:, end] + (store["z"] - ctx.source.z[1][:, end, 0]) @ b.W_O[1, 0]
    ref = readout_from_logits(b.ln_final(x) @ b.W_U + b.b_U, ctx.batch.answer_ids)
    assert torch.allclose(got, _pd(ctx, ref), atol=1e-6)
    assert (got - _pd(ctx, ctx.source.readout)).abs().max() > 1e-4  # the head does something


def test_yy_chain_matches_a_hand_built_run(ctx):
    """{mlp0@YY -> a1.h1@END k/v}: MLP0 at YY reads the clean embedding at YY; the head reads
    MLP0's patched write at YY; everything else corrupted."""
    b = ctx.bridge
    c = make_circuit("chain", {"END": ["1.1"], "YY": ["mlp0"]})
    got = _pd(ctx, paths_readout(ctx, hanna_paths(c)))
    yy, end = ctx.yy_pos, ctx.end_pos
    d_emb = ctx.base.resid_pre[0][:, yy] - ctx.source.resid_pre[0][:, yy]
    store = {}

    def mlp_in(x, hook):
        x = x.clone()
        x[:, yy] += d_emb
        return x

    def mlp_out(y, hook):
        store["m"] = y[:, yy] - ctx.source.mlp_out[0][:, yy]
        return ctx.source.mlp_out[0]

    def qkv(ch):
        def fn(x, hook):
            x = x.clone()
            if ch == "q":
                x[:, end, 1] = ctx.base.resid_pre[1][:, end]
            else:
                x[:, yy, 1] += store["m"]
            return x

        return fn

    def keep(z, hook):
        store["z"] = z[:, end, 1]
        return ctx.source.z[1]

    hooks = [
        ("blocks.0.ln2.hook_in", mlp_in),
        ("blocks.0.hook_mlp_out", mlp_out),
        *[(f"blocks.1.attn.hook_{ch}_input", qkv(ch)) for ch in "qkv"],
        ("blocks.1.attn.hook_z", keep),
    ]
    with split_qkv(b):
        b.run_with_hooks(ctx.batch.corrupted, fwd_hooks=hooks)
    x = ctx.source.final[:, end] + (store["z"] - ctx.source.z[1][:, end, 1]) @ b.W_O[1, 1]
    ref = readout_from_logits(b.ln_final(x) @ b.W_U + b.b_U, ctx.batch.answer_ids)
    assert torch.allclose(got, _pd(ctx, ref), atol=1e-6)
    assert (got - _pd(ctx, ctx.source.readout)).abs().max() > 1e-4


def test_paths_readout_never_formats_a_tensor(ctx, monkeypatch):
    """TransformerLens names every hook by its repr (a bound method's includes its object's)."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was formatted")

    monkeypatch.setattr(torch.Tensor, "__repr__", refuse)
    paths_readout(ctx, hanna_paths(make_circuit("chain", {"END": ["1.1"], "YY": ["mlp0"]})))


def test_paths_readout_does_not_depend_on_the_edges_order(ctx):
    """Three or more senders of one receiver are summed in one order whatever the order of
    ``spec.edges`` (a set: it changes with each process's string hashing), so the path-level
    numbers are the same bits in every process."""
    c = make_circuit("fan-in", {"END": ["1.1"], "YY": ["mlp0", "0.0", "0.1"]})
    spec = hanna_paths(c)
    senders = [s for s, r in spec.edges if r == "a1.h1@END:k"]
    assert len(senders) >= 3
    edges = sorted(spec.edges)
    got = [
        paths_readout(ctx, dataclasses.replace(spec, edges=order)).answer_logits
        for order in (edges, edges[::-1], edges[1::2] + edges[::2])
    ]
    assert all(torch.equal(got[0], g) for g in got[1:])
