"""Influence, pruning and scores on hand-built graphs; scores on real tiny models."""

from __future__ import annotations

import torch
from _graphs_helpers import exact_clt, make_clt, tiny_loaded
from hypothesis import given, settings
from hypothesis import strategies as st

from clt_bench.config import GraphsConfig
from clt_bench.graphs import build_graph
from clt_bench.graphs.graph_scores import ERROR, FEATURE, TARGET, TOKEN, graph_scores, pruned_scores
from clt_bench.graphs.influence import influence, normalize_abs, prune

TOKENS = torch.tensor([50256, 464, 1175, 15436, 422, 262, 614, 1596])


def _chain():
    """tok0 -> f0 -> y, tok1 -> f0, err -> y, tok0 -> y (rows receive; nodes f0, err, t0, t1, y)."""
    A = torch.zeros(5, 5, dtype=torch.float64)
    A[0, 2], A[0, 3] = 3.0, -1.0  # f0 <- tok0 (3), tok1 (-1)
    A[4, 0], A[4, 1], A[4, 2] = 2.0, -1.0, 1.0  # y <- f0 (2), err (-1), tok0 (1)
    kinds = torch.tensor([FEATURE, ERROR, TOKEN, TOKEN, TARGET])
    w = torch.tensor([0, 0, 0, 0, 1.0], dtype=torch.float64)
    return A, kinds, w


def test_influence_hand_computed():
    A, kinds, w = _chain()
    infl = influence(normalize_abs(A), w)
    # y's row |.|-normalised: f0 1/2, err 1/4, tok0 1/4; f0's row: tok0 3/4, tok1 1/4
    expected = torch.tensor([0.5, 0.25, 0.25 + 0.5 * 0.75, 0.5 * 0.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(infl, expected)
    # the closed form (I - Â)^-1 - I agrees
    Ah = normalize_abs(A)
    closed = w @ (torch.linalg.inv(torch.eye(5, dtype=torch.float64) - Ah) - torch.eye(5))
    torch.testing.assert_close(infl, closed)


def test_scores_hand_computed():
    A, kinds, w = _chain()
    s = graph_scores(A, kinds, w)
    # flow ends on tokens 0.625 + 0.125, on the error node 0.25
    assert abs(s["replacement"] - 0.75) < 1e-12
    # completeness: y (flow 1) gets 3/4 from non-errors; f0 (flow 0.5) gets all: (0.75+0.5)/1.5
    assert abs(s["completeness"] - 1.25 / 1.5) < 1e-12


def test_all_error_graph_scores_zero_and_no_error_graph_scores_one():
    A, kinds, w = _chain()
    only_err = torch.zeros_like(A)
    only_err[4, 1] = 5.0  # the target's only input is the error node
    only_err[0, 1] = 2.0  # a feature fed by errors only (shape check, kinds reused)
    assert graph_scores(only_err, kinds, w) == {"replacement": 0.0, "completeness": 0.0}
    no_err = A.clone()
    no_err[:, 1] = 0.0
    assert graph_scores(no_err, kinds, w) == {"replacement": 1.0, "completeness": 1.0}


def test_unexplained_mass_stays_in_normalisation():
    A, kinds, w = _chain()
    A[:, 1] = 0.0
    s = graph_scores(A, kinds, w, unexplained_abs=torch.tensor([0, 0, 0, 0, 3.0]))
    assert s["replacement"] < 1.0 and s["completeness"] < 1.0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 1.0), st.floats(0.05, 1.0))
def test_scores_in_unit_interval_and_full_threshold_keeps_all(seed, node_t, edge_t):
    gen = torch.Generator().manual_seed(seed)
    n_f, n_e, n_tok, n_t = 6, 3, 3, 2
    n = n_f + n_e + n_tok + n_t
    A = torch.randn(n, n, generator=gen, dtype=torch.float64)
    A = torch.tril(A, diagonal=-1).T.contiguous()  # edges from later-index to earlier... DAG
    A[n_f : n_f + n_e + n_tok] = 0.0  # errors and tokens have no inputs
    A[:, n - n_t :] = 0.0  # targets are sinks
    A[n - n_t :, :] = torch.randn(n_t, n, generator=gen, dtype=torch.float64)
    A[n - n_t :, n - n_t :] = 0.0
    kinds = torch.tensor([FEATURE] * n_f + [ERROR] * n_e + [TOKEN] * n_tok + [TARGET] * n_t)
    w = torch.zeros(n, dtype=torch.float64)
    w[n - n_t :] = torch.tensor([0.7, 0.3], dtype=torch.float64)
    always = (kinds == TOKEN) | (kinds == TARGET)
    s = graph_scores(A, kinds, w)
    assert all(0.0 <= v <= 1.0 for v in s.values())
    node_mask, edge_mask, _ = prune(A, w, always, node_t, edge_t)
    ps = pruned_scores(A, kinds, w, node_mask, edge_mask)
    assert all(0.0 <= v <= 1.0 for v in ps.values())
    assert ps["completeness"] <= s["completeness"] + 1e-12
    node_mask, edge_mask, _ = prune(A, w, always, 1.0, 1.0)
    assert node_mask.all() and bool((edge_mask == (A != 0)).all())
    assert pruned_scores(A, kinds, w, node_mask, edge_mask) == s


def test_exact_clt_scores_one():
    loaded = tiny_loaded(2, 16, 0, torch.float64)
    clt = exact_clt(loaded, TOKENS)
    g = build_graph(loaded, clt, TOKENS, "logits", GraphsConfig())
    assert g.error_norms.max() < 1e-10
    assert g.n_features >= TOKENS.shape[0]
    assert (g.adjacency[: g.n_features, : g.n_features] != 0).any(), "features must connect"
    for key in ("completeness", "replacement"):
        assert g.scores[key] > 1 - 1e-9, (key, g.scores)


def test_dead_clt_routes_mlps_through_errors():
    """No active feature: every MLP path runs through error nodes; completeness falls to the
    tokens' direct share, and the target's only feature-free inputs are errors and tokens."""
    loaded = tiny_loaded(2, 16, 0, torch.float64)
    clt = make_clt(loaded, TOKENS, "relu")
    with torch.no_grad():
        clt.b_enc.fill_(-1e6)
    g = build_graph(loaded, clt, TOKENS, "logits", GraphsConfig())
    assert g.n_active == 0
    o = g.offsets()
    rows = g.adjacency[o["target"] :].abs()
    err, tok = rows[:, o["error"] : o["token"]].sum(1), rows[:, o["token"] : o["target"]].sum(1)
    w = torch.tensor([t.weight for t in g.targets], dtype=torch.float64)
    torch.testing.assert_close(
        torch.tensor(g.scores["completeness"], dtype=torch.float64),
        (w * tok / (tok + err)).sum() / w.sum(),
    )
    assert g.scores["replacement"] < 1.0


def test_prune_drops_features_without_kept_incoming_edges():
    """f0 keeps its (weak) edge to y but loses both incoming edges: circuit-tracer drops it."""
    A = torch.zeros(5, 5, dtype=torch.float64)  # nodes f0, err, tok0, tok1, y
    A[4, 0], A[4, 1] = 0.1, 10.0  # y <- f0 (weak), err (strong)
    A[0, 2], A[0, 3] = 1.0, 1.0  # f0 <- tok0, tok1 (each half of f0's small influence)
    w = torch.tensor([0, 0, 0, 0, 1.0], dtype=torch.float64)
    always = torch.tensor([False, False, True, True, True])
    feats = torch.tensor([True, False, False, False, False])
    old_nodes, old_edges, _ = prune(A, w, always, 1.0, 0.985)
    assert old_nodes[0] and old_edges[4, 0] and not old_edges[0].any()  # in-edges pruned
    nodes, edges, _ = prune(A, w, always, 1.0, 0.985, features=feats)
    assert not nodes[0] and not edges[:, 0].any() and not edges[0].any()
    assert nodes[1] and edges[4, 1]
