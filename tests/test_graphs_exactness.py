"""Property tests of the local replacement model and attribution (docs/methods.md#graphs).

Tiny random GPT-2-shaped bridges, random CLTs of every activation kind (CLT and PLT, with and
without skip), random prompts; float64 except where float32 is the point.
"""

from __future__ import annotations

import pytest
import torch
from _graphs_helpers import KINDS, make_clt, tiny_loaded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clt_bench.graphs import build_replacement, run_frozen
from clt_bench.graphs.targets import answer_targets
from clt_bench.testing.graph_exactness import (
    check_capped_exactness,
    check_completeness,
    check_frozen_linearity,
    check_single_source_exactness,
)

# the structural space (4 activation kinds x cross-layer x skip = 16 cases) is enumerated for the
# two exactness properties; hypothesis draws the rest (depth, prompt, seed) within each case
STRUCTURE = [(k, c, s) for k in KINDS for c in (False, True) for s in (False, True)]
SETTINGS = settings(
    max_examples=16,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PER_STRUCTURE = settings(SETTINGS, max_examples=2)


@st.composite
def cases(draw, kind=None, cross_layer=None, skip=None):
    return {
        "n_layer": draw(st.sampled_from([2, 3])),
        "kind": kind if kind is not None else draw(st.sampled_from(KINDS)),
        "cross_layer": cross_layer if cross_layer is not None else draw(st.booleans()),
        "skip": skip if skip is not None else draw(st.booleans()),
        "tokens": torch.tensor(draw(st.lists(st.integers(0, 50256), min_size=2, max_size=7))),
        "seed": draw(st.integers(0, 3)),
    }


def _setup(case, dtype=torch.float64):
    loaded = tiny_loaded(case["n_layer"], 16, case["seed"], dtype)
    clt = make_clt(
        loaded, case["tokens"], case["kind"], case["cross_layer"], case["skip"], seed=case["seed"]
    )
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


@pytest.mark.parametrize(("kind", "cross_layer", "skip"), STRUCTURE)
@PER_STRUCTURE
@given(data=st.data())
def test_completeness_every_node(kind, cross_layer, skip, data):
    """value = Σ incoming edges + constant terms, for every target and every active feature."""
    case = data.draw(cases(kind, cross_layer, skip))
    loaded, clt = _setup(case)
    targets = answer_targets(loaded.tokenizer, 50257)[::17]
    check_completeness(loaded, clt, case["tokens"], targets, batch_size=5)


@SETTINGS
@given(cases(), st.integers(1, 6))
def test_capped_graph_stays_exact(case, cap):
    """With max_feature_nodes < active features, the left-out features' edges become
    unexplained mass: rows still add up exactly."""
    loaded, clt = _setup(case)
    check_capped_exactness(loaded, clt, case["tokens"], cap)


@pytest.mark.parametrize(("kind", "cross_layer", "skip"), STRUCTURE)
@PER_STRUCTURE
@given(data=st.data())
def test_exactness_single_source_perturbation(kind, cross_layer, skip, data):
    """Perturbing one source by δ in the frozen model moves every node by δ·w (= δ·A/a)."""
    case = data.draw(cases(kind, cross_layer, skip))
    delta = data.draw(st.floats(-2.0, 2.0).filter(lambda v: abs(v) > 0.1))
    loaded, clt = _setup(case)
    targets = answer_targets(loaded.tokenizer, 50257)[::25]
    check_single_source_exactness(loaded, clt, case["tokens"], targets, delta, case["seed"])


@SETTINGS
@given(cases())
def test_frozen_model_is_linear(case):
    """Gradients of the frozen model do not change when its inputs move."""
    loaded, clt = _setup(case)
    check_frozen_linearity(loaded, clt, case["tokens"], case["seed"])


def test_exactness_checks_can_fail():
    """Control for the checks above: a graph whose edges are off, or a model that is not
    frozen, fails them."""
    loaded = tiny_loaded(2, 16, 0, torch.float64)
    tokens = torch.tensor([50256, 464, 1175, 15436, 422])
    clt = make_clt(loaded, tokens, "jumprelu")
    targets = answer_targets(loaded.tokenizer, 50257)[::25]
    from unittest import mock

    import clt_bench.testing.graph_exactness as A

    real = A.build_graph

    def off_by_some(*args, **kwargs):
        g = real(*args, **kwargs)
        g.adjacency[g.adjacency != 0] *= 1.01
        return g

    with mock.patch.object(A, "build_graph", off_by_some):
        with pytest.raises(AssertionError, match="do not add up"):
            check_completeness(loaded, clt, tokens, targets)
        with pytest.raises(AssertionError, match="δ"):
            check_single_source_exactness(loaded, clt, tokens, targets)


def test_unfrozen_model_is_not_linear():
    """Control: without the freezing the same gradients do move (the test above can fail)."""
    loaded = tiny_loaded(2, 16, 0, torch.float64)
    toks = torch.tensor([[50256, 464, 1175, 15436]])
    grads = []
    for shift in (0.0, 3.0):
        leaf = torch.zeros(1, 4, 16, dtype=torch.float64, requires_grad=True)
        noise = shift * torch.randn(
            1, 4, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64
        )
        out = loaded.bridge.run_with_hooks(
            toks, fwd_hooks=[("hook_embed", lambda t, hook, n=noise, lf=leaf: t + n + lf)]
        )[0, -1, 7]
        grads.append(torch.autograd.grad(out, leaf)[0])
    assert (grads[0] - grads[1]).abs().max() > 1e-4


def test_frozen_pass_never_formats_a_tensor(monkeypatch):
    """TransformerLens names every hook by its repr (a bound method's repr includes its object's):
    a frozen pass must not format its tensors for that (it once took half the compare stage)."""
    loaded = tiny_loaded(2, 16, 0, torch.float32)
    tokens = torch.tensor([50256, 464, 1175, 15436, 422])
    rm = build_replacement(loaded.bridge, make_clt(loaded, tokens, "relu", True, False), tokens)

    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was formatted")

    monkeypatch.setattr(torch.Tensor, "__repr__", refuse)
    run_frozen(rm, modes="frozen", leaves=True)
