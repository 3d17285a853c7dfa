"""Property tests of the local replacement model and attribution (SPEC-clt.md §4 and §6).

Tiny random GPT-2-shaped bridges, random CLTs of every activation kind (CLT and PLT, with and
without skip), random prompts; float64 except where float32 is the point.
"""

from __future__ import annotations

import pytest
import torch
from _graphs_helpers import KINDS, make_clt, tiny_loaded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clt_bench.config import GraphsConfig
from clt_bench.graphs import build_graph, build_replacement, run_frozen
from clt_bench.graphs.targets import answer_targets

# 16 examples: the structural space is 4 activation kinds x cross-layer x skip
SETTINGS = settings(max_examples=16, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def cases(draw):
    return {
        "n_layer": draw(st.sampled_from([2, 3])),
        "kind": draw(st.sampled_from(KINDS)),
        "cross_layer": draw(st.booleans()),
        "skip": draw(st.booleans()),
        "tokens": torch.tensor(draw(st.lists(st.integers(0, 50256), min_size=2, max_size=7))),
        "seed": draw(st.integers(0, 3)),
    }


def _setup(case, dtype=torch.float64):
    loaded = tiny_loaded(case["n_layer"], 16, case["seed"], dtype)
    clt = make_clt(loaded, case["tokens"], case["kind"], case["cross_layer"], case["skip"],
                   seed=case["seed"])
    return loaded, clt


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("skip", [False, True])
def test_replacement_reproduces_logits_float32(kind, skip):
    loaded = tiny_loaded(3, 32, 1, torch.float32)
    tokens = torch.tensor([50256, 464, 1175, 15436, 422, 262, 614, 1596])
    clt = make_clt(loaded, tokens, kind, cross_layer=kind != "relu", skip=skip)
    rm = build_replacement(loaded.bridge, clt, tokens)
    for modes in ("frozen", "linear"):
        run = run_frozen(rm, modes=modes)
        torch.testing.assert_close(run.logits, rm.logits, atol=1e-5, rtol=0)
    assert (rm.acts != 0).any(), "the random CLT should have active features"


@SETTINGS
@given(cases())
def test_completeness_every_node(case):
    """value = Σ incoming edges + constant terms, for every target and every active feature."""
    loaded, clt = _setup(case)
    targets = answer_targets(loaded.tokenizer, 50257)[::17]
    g = build_graph(loaded, clt, case["tokens"], targets, GraphsConfig(batch_size=5))
    assert g.n_features == g.n_active
    rows = g.adjacency.sum(1) + g.unexplained_in + g.constant_in
    vals = g.node_values()
    o = g.offsets()
    torch.testing.assert_close(rows[: o["error"]], vals[: o["error"]], atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[o["target"]:], vals[o["target"]:], atol=1e-5, rtol=0)
    for j in range(len(targets)):
        assert abs(g.target_split(j)["residual"]) < 1e-5
    # errors and tokens have no incoming edges
    assert (g.adjacency[o["error"]:o["target"]] == 0).all()
    assert all(0.0 <= v <= 1.0 for v in g.scores.values())


@SETTINGS
@given(cases(), st.integers(1, 6))
def test_capped_graph_stays_exact(case, cap):
    """With max_feature_nodes < active features, the left-out features' edges become
    unexplained mass: rows still add up exactly."""
    loaded, clt = _setup(case)
    full = build_graph(loaded, clt, case["tokens"], "logits", GraphsConfig(batch_size=4))
    g = build_graph(loaded, clt, case["tokens"], "logits",
                    GraphsConfig(batch_size=2, max_feature_nodes=cap))
    assert g.n_features == min(cap, full.n_active)
    rows = g.adjacency.sum(1) + g.unexplained_in + g.constant_in
    vals = g.node_values()
    o = g.offsets()
    torch.testing.assert_close(rows[: o["error"]], vals[: o["error"]], atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[o["target"]:], vals[o["target"]:], atol=1e-5, rtol=0)
    assert all(0.0 <= v <= 1.0 for v in g.scores.values())
    if g.n_features < full.n_active:
        assert (g.unexplained_abs[o["target"]:] > 0).any()


@SETTINGS
@given(cases(), st.floats(-2.0, 2.0).filter(lambda v: abs(v) > 0.1))
def test_exactness_single_source_perturbation(case, delta):
    """Perturbing one source by δ in the frozen model moves every node by δ·w (= δ·A/a)."""
    loaded, clt = _setup(case)
    targets = answer_targets(loaded.tokenizer, 50257)[::25]
    g = build_graph(loaded, clt, case["tokens"], targets, GraphsConfig(batch_size=7))
    rm = build_replacement(loaded.bridge, clt, case["tokens"])
    D = torch.stack([t.direction for t in targets])
    o = g.offsets()
    base = run_frozen(rm)
    base_vals = torch.cat([torch.cat(base.pre), base.logits[0] @ D.T])
    rows = torch.cat([torch.arange(o["error"]), torch.arange(o["target"], g.n_nodes)])
    gen = torch.Generator().manual_seed(case["seed"])
    sources = []
    if g.n_features:
        sources += torch.randint(0, g.n_features, (2,), generator=gen).tolist()
    sources += [o["error"] + int(torch.randint(0, o["token"] - o["error"], (1,), generator=gen))]
    sources += [o["token"] + int(torch.randint(0, g.n_pos, (1,), generator=gen))]
    for s in sources:
        d = g.describe(s)
        if d["kind"] == "feature":
            acts = rm.acts.clone()
            acts[0, d["pos"], d["layer"], d["feature"]] += delta
            run, per_unit = run_frozen(rm, acts=acts), g.activations[s]
        elif d["kind"] == "error":
            err = rm.errors.clone()
            err[0, d["pos"], d["layer"]] *= 1 + delta
            run, per_unit = run_frozen(rm, errors=err), 1.0
        else:
            emb = rm.embed.clone()
            emb[0, d["pos"]] *= 1 + delta
            run, per_unit = run_frozen(rm, embed=emb), 1.0
        new_vals = torch.cat([torch.cat(run.pre), run.logits[0] @ D.T])
        expected = g.adjacency[rows, s] * delta / per_unit  # δ·w with w = A / a
        torch.testing.assert_close(new_vals - base_vals, expected, atol=1e-7, rtol=1e-6)


@SETTINGS
@given(cases())
def test_frozen_model_is_linear(case):
    """Gradients of the frozen model do not change when its inputs move."""
    loaded, clt = _setup(case)
    rm = build_replacement(loaded.bridge, clt, case["tokens"])
    gen = torch.Generator().manual_seed(case["seed"])
    D = torch.randn(1, 50257, generator=gen, dtype=torch.float64)
    grads = []
    for shift in (0.0, 3.0):
        emb = rm.embed + shift * torch.randn(rm.embed.shape, generator=gen, dtype=torch.float64)
        err = rm.errors + shift * torch.randn(rm.errors.shape, generator=gen, dtype=torch.float64)
        run = run_frozen(rm, embed=emb, errors=err, leaves=True)
        out = (run.logits[0] @ D.T).sum() + sum(p.sum() for p in run.pre)
        g = torch.autograd.grad(out, [run.embed_leaf, *run.mlp_leaves], allow_unused=True)
        grads.append([torch.zeros(1) if x is None else x for x in g])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_unfrozen_model_is_not_linear():
    """Control: without the freezing the same gradients do move (the test above can fail)."""
    loaded = tiny_loaded(2, 16, 0, torch.float64)
    toks = torch.tensor([[50256, 464, 1175, 15436]])
    grads = []
    for shift in (0.0, 3.0):
        leaf = torch.zeros(1, 4, 16, dtype=torch.float64, requires_grad=True)
        noise = shift * torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64)
        out = loaded.bridge.run_with_hooks(toks, fwd_hooks=[
            ("hook_embed", lambda t, hook, n=noise, lf=leaf: t + n + lf)])[0, -1, 7]
        grads.append(torch.autograd.grad(out, leaf)[0])
    assert (grads[0] - grads[1]).abs().max() > 1e-4
