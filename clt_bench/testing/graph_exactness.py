"""Exactness properties of attribution graphs that hold for *any* transcoder in an exact
implementation (error nodes absorb what it misses): the checks behind
tests/test_graphs_exactness.py, for a CLT author's own transcoder. Each raises ``AssertionError``
with the offending values, pointing at the transcoder's file (NaN, a wrong activation, thresholds
in the wrong units) or at the graph code. Run them in float64 (``load_model(..., dtype="float64")``,
``clt.double()``); ``tokens`` is one prompt [pos].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.config import GraphsConfig
from clt_bench.graphs import build_graph, build_replacement, run_frozen
from clt_bench.graphs.graph import Graph
from clt_bench.graphs.targets import Target
from clt_bench.models.sources import LoadedModel


def _rows_match_values(g: Graph, atol: float, what: str) -> None:
    """value of every feature and target node = Σ incoming edges + unexplained + constants."""
    rows = g.adjacency.sum(1) + g.unexplained_in + g.constant_in
    vals = g.node_values()
    o = g.offsets()
    for name, sl in (("feature", slice(0, o["error"])), ("target", slice(o["target"], None))):
        torch.testing.assert_close(
            rows[sl],
            vals[sl],
            atol=atol,
            rtol=0,
            msg=lambda m, n=name: f"{what}: {n} node rows do not add up to their values. {m}",
        )


def check_completeness(
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    tokens: torch.Tensor,
    targets: Sequence[Target] | str,
    batch_size: int = 8,
    atol: float = 1e-5,
) -> Graph:
    """Every node's value equals the sum of its incoming edges plus its constant terms; every
    target splits exactly into edges, constants and residual ~ 0; error and token nodes have no
    incoming edges; graph scores lie in [0, 1]. Returns the graph."""
    # every node is checked, BOS included (zero_bos=False; the BOS convention has its own tests)
    g = build_graph(
        loaded, clt, tokens, targets, GraphsConfig(batch_size=batch_size, zero_bos=False)
    )
    assert g.n_features == g.n_active, (
        f"{g.n_features} feature nodes for {g.n_active} active features (none should be capped)"
    )
    _rows_match_values(g, atol, "completeness")
    for j in range(len(g.targets)):
        r = g.target_split(j)["residual"]
        assert abs(r) < atol, f"target {j} has an unexplained residual of {r:.3g}"
    o = g.offsets()
    assert (g.adjacency[o["error"] : o["target"]] == 0).all(), "error/token nodes have in-edges"
    bad = {k: v for k, v in g.scores.items() if not 0.0 <= v <= 1.0}
    assert not bad, f"graph scores outside [0, 1]: {bad}"
    return g


def check_capped_exactness(
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    tokens: torch.Tensor,
    cap: int,
    targets: Sequence[Target] | str = "logits",
    atol: float = 1e-5,
) -> Graph:
    """With ``max_feature_nodes=cap`` below the active count, the left-out features' edges
    become unexplained mass and every row still adds up exactly."""
    full = build_graph(loaded, clt, tokens, targets, GraphsConfig(batch_size=4, zero_bos=False))
    g = build_graph(
        loaded,
        clt,
        tokens,
        targets,
        GraphsConfig(batch_size=2, max_feature_nodes=cap, zero_bos=False),
    )
    zero = (
        ""
        if g.n_features
        else " (a feature that writes nothing has no influence: is the decoder zero?)"
    )
    assert g.n_features == min(cap, full.n_active), (
        f"{g.n_features} feature nodes with a cap of {cap} and {full.n_active} active "
        f"features{zero}"
    )
    _rows_match_values(g, atol, f"capped at {cap} features")
    bad = {k: v for k, v in g.scores.items() if not 0.0 <= v <= 1.0}
    assert not bad, f"graph scores outside [0, 1]: {bad}"
    if g.n_features < full.n_active:
        o = g.offsets()
        assert (g.unexplained_abs[o["target"] :] > 0).any(), "capped features left no mass"
    return g


def check_single_source_exactness(
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    tokens: torch.Tensor,
    targets: Sequence[Target],
    delta: float = 0.5,
    seed: int = 0,
    n_features: int = 2,
    atol: float = 1e-7,
    rtol: float = 1e-6,
) -> Graph:
    """Perturbing one source node by δ in the frozen replacement model moves every feature and
    target node by δ·w, w = edge / source activation. Sources: ``n_features`` random active
    features, one error node and one token node (seeded)."""
    g = build_graph(loaded, clt, tokens, list(targets), GraphsConfig(batch_size=7, zero_bos=False))
    rm = build_replacement(loaded.bridge, clt, tokens)
    D = torch.stack([t.direction for t in targets]).to(rm.logits.dtype)
    o = g.offsets()
    base = run_frozen(rm)
    base_vals = torch.cat([torch.cat(base.pre), base.logits[0] @ D.T])
    rows = torch.cat([torch.arange(o["error"]), torch.arange(o["target"], g.n_nodes)])
    gen = torch.Generator().manual_seed(seed)
    sources = []
    if g.n_features:
        sources += torch.randint(0, g.n_features, (n_features,), generator=gen).tolist()
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
        torch.testing.assert_close(
            new_vals - base_vals,
            expected,
            atol=atol,
            rtol=rtol,
            msg=lambda m, d=d: f"perturbing {d} does not move the nodes by δ·(edge weight). {m}",
        )
    return g


def check_frozen_linearity(
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    tokens: torch.Tensor,
    seed: int = 0,
    shift: float = 3.0,
    atol: float = 1e-9,
    rtol: float = 1e-9,
) -> None:
    """Gradients of the frozen replacement model do not change when its inputs (embeddings,
    error nodes) move: attention patterns and LayerNorm scales are frozen, so it is linear."""
    rm = build_replacement(loaded.bridge, clt, tokens)
    gen = torch.Generator().manual_seed(seed)
    dt = rm.embed.dtype
    D = torch.randn(1, rm.logits.shape[-1], generator=gen, dtype=dt)
    grads = []
    for s in (0.0, shift):
        emb = rm.embed + s * torch.randn(rm.embed.shape, generator=gen, dtype=dt)
        err = rm.errors + s * torch.randn(rm.errors.shape, generator=gen, dtype=dt)
        run = run_frozen(rm, embed=emb, errors=err, leaves=True)
        out = (run.logits[0] @ D.T).sum() + sum(p.sum() for p in run.pre)
        g = torch.autograd.grad(out, [run.embed_leaf, *run.mlp_leaves], allow_unused=True)
        grads.append([torch.zeros(1, dtype=dt) if x is None else x for x in g])
    for i, (a, b) in enumerate(zip(*grads, strict=True)):
        torch.testing.assert_close(
            a,
            b,
            atol=atol,
            rtol=rtol,
            msg=lambda m, i=i: f"frozen-model gradient {i} moved with its inputs (not linear). {m}",
        )
