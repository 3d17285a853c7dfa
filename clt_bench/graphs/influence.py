"""Influence and pruning (docs/methods.md#graphs).

Conventions: ``A[t, s]`` is the edge from source s to target t (rows receive). ``Â`` is |A| with
each row divided by its total incoming mass; ``extra_abs[t]`` adds mass that reaches t from outside
the graph (features never attributed, pruned nodes), so that mass stays in the normalisation.
The influence of every node on the targets is ``w^T (Â + Â² + ...) = w^T ((I - Â)^{-1} - I)``,
with ``w`` the target weights; attribution graphs are DAGs, so the series ends after at most
depth-many terms and is computed exactly by propagation, never by a dense inverse.
"""

from __future__ import annotations

import torch

from clt_bench.errors import UserError


def normalize_abs(A: torch.Tensor, extra_abs: torch.Tensor | None = None) -> torch.Tensor:
    """[n, n] -> |A| row-normalised; rows with no mass stay zero."""
    M = A.abs()
    total = M.sum(1)
    if extra_abs is not None:
        total = total + extra_abs
    return M / torch.where(total > 0, total, torch.ones_like(total))[:, None]


def propagate(rows: torch.Tensor, row_nodes: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
    """Influence ``w^T Σ_{k>=1} Â^k`` when only some nodes have incoming rows.

    ``rows`` [R, N]: normalised incoming weights of the R nodes ``row_nodes`` [R] (indices into the
    N columns); ``w_rows`` [R]: the starting weight on each row node (the targets' weights).
    Returns [N]: the flow that reaches every node. Exact for a DAG (stops when the flow dies out).
    """
    if not bool(torch.isfinite(rows).all()) or not bool(torch.isfinite(w_rows).all()):
        # NaN never dies out, so it would read as a cycle below
        raise UserError(
            "the attribution graph's edge weights are not finite (an overflow: are the "
            "transcoder's or the model's weights scaled far too large?)."
        )
    N = rows.shape[1]
    infl = torch.zeros(N, dtype=rows.dtype, device=rows.device)
    cur = w_rows.to(rows.dtype)
    for _ in range(N + 1):
        if not bool((cur != 0).any()):
            break
        flow = cur @ rows
        infl = infl + flow
        cur = flow[row_nodes]
    else:
        if bool((cur != 0).any()):
            raise ValueError("the graph has a cycle: influence does not converge")
    return infl


def influence(A_hat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[n] node influence ``w^T ((I - Â)^{-1} - I)`` on a row-normalised DAG ``A_hat`` [n, n]."""
    nodes = torch.arange(A_hat.shape[0], device=A_hat.device)
    return propagate(A_hat, nodes, w)


def _cumulative_keep(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep the highest scores until ``threshold`` of the total is covered (bool mask)."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    total = scores.sum()
    if threshold >= 1.0:
        return torch.ones_like(keep)
    if total <= 0 or scores.numel() == 0:
        return keep
    order = scores.argsort(descending=True)
    cum_before = torch.cumsum(scores[order], 0) - scores[order]
    keep[order[cum_before < threshold * total]] = True
    return keep


def prune(
    A: torch.Tensor,
    w: torch.Tensor,
    always: torch.Tensor,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    extra_abs: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prune by influence: returns (node_mask [n], edge_mask [n, n], influence [n]).

    Nodes other than ``always`` (tokens, targets) are kept, highest influence first, until
    ``node_threshold`` of their total influence is covered; then edges, scored by the share of the
    influence of their receiving node that they carry, until ``edge_threshold``. Then, repeatedly
    until nothing changes (as circuit-tracer's ``prune_graph``), nodes left without a kept outgoing
    edge are dropped, and so are feature nodes (``features`` [n] bool) left without a kept incoming
    edge. Thresholds >= 1 keep everything.
    """
    A_hat = normalize_abs(A, extra_abs)
    infl = influence(A_hat, w)
    cand = ~always
    node_mask = always.clone()
    node_mask[cand] = _cumulative_keep(infl[cand], node_threshold)
    keep_all = node_threshold >= 1.0 and edge_threshold >= 1.0
    sub = A * node_mask[:, None] * node_mask[None, :]
    sub_hat = normalize_abs(sub, extra_abs)
    sub_infl = influence(sub_hat, w)
    edge_scores = sub_hat * (sub_infl + w)[:, None]
    nz = edge_scores > 0
    edge_mask = torch.zeros_like(nz)
    edge_mask[nz] = _cumulative_keep(edge_scores[nz], edge_threshold)
    if edge_threshold >= 1.0:
        edge_mask = (sub != 0) | nz
    if not keep_all:
        feat = features if features is not None else torch.zeros_like(node_mask)
        while True:  # drop nodes without kept outgoing edges, features without incoming ones
            has_out, has_in = edge_mask.any(0), edge_mask.any(1)
            drop = node_mask & ~always & (~has_out | (feat & ~has_in))
            if not bool(drop.any()):
                break
            node_mask &= ~drop
            edge_mask &= node_mask[:, None] & node_mask[None, :]
    edge_mask &= node_mask[:, None] & node_mask[None, :]
    return node_mask, edge_mask, infl
