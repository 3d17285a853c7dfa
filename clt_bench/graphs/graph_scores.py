"""Replacement and completeness scores of an attribution graph (docs/methods.md#graphs).

Both are computed on the influence flow ``f = w + w^T Σ_k Â^k`` (``clt_bench.graphs.influence``):
flow starts at the targets (weights ``w``) and splits over each node's incoming edges by |A|.
Replacement: the flow that ends on token nodes over the flow that ends on token nodes, error
nodes or outside the graph (``unexplained``). Completeness: over the nodes with incoming mass
(features and targets), the flow-weighted share of incoming |A| from features and tokens.
Unlike circuit-tracer 0.5, token and error nodes are not scored and the mass of active features
left out of the graph stays in every normalisation (docs/methods.md lists the pitfalls); a graph
with no flow at all scores 0.
"""

from __future__ import annotations

import torch

from clt_bench.graphs.influence import influence, normalize_abs

FEATURE, ERROR, TOKEN, TARGET = 0, 1, 2, 3


def graph_scores(
    A: torch.Tensor,
    kinds: torch.Tensor,
    w: torch.Tensor,
    unexplained_abs: torch.Tensor | None = None,
) -> dict[str, float]:
    """Scores of a graph. ``A`` [n, n] (rows receive), ``kinds`` [n] (FEATURE/ERROR/TOKEN/TARGET),
    ``w`` [n] target weights (zero off targets), ``unexplained_abs`` [n] incoming mass from
    outside the graph."""
    A = A.double()
    extra = A.new_zeros(A.shape[0]) if unexplained_abs is None else unexplained_abs.double()
    w = w.double()
    A_hat = normalize_abs(A, extra)
    flow = influence(A_hat, w) + w
    total_in = A.abs().sum(1) + extra
    has_in = total_in > 0
    safe = torch.where(has_in, total_in, torch.ones_like(total_in))
    out_flow = flow * extra / safe  # flow leaving the graph through unexplained mass
    tok = flow[kinds == TOKEN].sum()
    err = flow[kinds == ERROR].sum()
    denom = tok + err + out_flow.sum()
    replacement = float(tok / denom) if denom > 0 else 0.0
    good_src = (kinds == FEATURE) | (kinds == TOKEN)
    good_in = (A.abs() * good_src[None, :]).sum(1) / safe
    scored = has_in & ((kinds == FEATURE) | (kinds == TARGET))
    wsum = flow[scored].sum()
    completeness = float((flow[scored] * good_in[scored]).sum() / wsum) if wsum > 0 else 0.0
    return {
        "replacement": min(max(replacement, 0.0), 1.0),
        "completeness": min(max(completeness, 0.0), 1.0),
    }


def pruned_unexplained(
    A: torch.Tensor,
    node_mask: torch.Tensor,
    edge_mask: torch.Tensor,
    unexplained_abs: torch.Tensor | None = None,
) -> torch.Tensor:
    """[n] incoming mass of each node that the pruned graph no longer carries (+ the full graph's
    own unexplained mass): pruned nodes' and pruned edges' weight counts as unexplained."""
    dropped = (A.abs() * ~edge_mask).sum(1)
    base = torch.zeros_like(dropped) if unexplained_abs is None else unexplained_abs
    return (dropped + base) * node_mask


def pruned_scores(
    A: torch.Tensor,
    kinds: torch.Tensor,
    w: torch.Tensor,
    node_mask: torch.Tensor,
    edge_mask: torch.Tensor,
    unexplained_abs: torch.Tensor | None = None,
) -> dict[str, float]:
    """Scores of the pruned graph (kept nodes and edges only)."""
    sub = A * edge_mask
    extra = pruned_unexplained(A, node_mask, edge_mask, unexplained_abs)
    return graph_scores(sub, kinds, w * node_mask, extra)
