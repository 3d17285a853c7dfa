"""Build attribution graphs and target attributions (the public API of ``clt_bench.graphs``).

``build_graph`` = one frozen forward pass + batched backward passes (``batch_size`` rows each):
first the targets' rows, then the active features' rows. When a prompt has more active features
than ``max_feature_nodes``, features are attributed in order of their current influence on the
targets (recomputed after every batch, as circuit-tracer does) and the rest are left out of the
graph; their edges into attributed nodes are kept as ``unexplained`` mass (see ``graph.py``).
On GPT-2-style models (every model clt-bench ships) the rows and constant terms come from the
frozen model's hand-written transpose (``adjoint.py``), ~2x faster than circuit-tracer 0.5.0 on
the toy (benchmarks/RESULTS.md); elsewhere from ``Attributor`` (autograd through the bridge).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import cast

import torch
from transformers import PreTrainedTokenizerBase

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.config import GraphsConfig
from clt_bench.errors import UserError
from clt_bench.graphs.adjoint import FrozenAdjoint, supports_adjoint
from clt_bench.graphs.edge_weights import (
    Attributor,
    RowAttribution,
    TargetAttribution,
    constant_terms,
    feature_activations,
    feature_table,
    target_attributions_batch,
)
from clt_bench.graphs.graph import Graph
from clt_bench.graphs.graph_scores import FEATURE, graph_scores, pruned_scores
from clt_bench.graphs.influence import normalize_abs, propagate, prune
from clt_bench.graphs.local_replacement import build_replacement
from clt_bench.graphs.targets import Target, TaskTarget, directions, make_targets
from clt_bench.models import LoadedModel
from clt_bench.task.dataset import format_prompt
from clt_bench.task.spec import Template


def prompt_tokens(
    tokenizer: PreTrainedTokenizerBase,
    prompt_or_tokens: str | torch.Tensor | Sequence[int],
    prepend_bos: bool = True,
) -> tuple[torch.Tensor, str]:
    """([pos] token ids, prompt text).

    Text is tokenised exactly as the task's prompts (``clt_bench.task.dataset.format_prompt``):
    with ``prepend_bos`` the tokenizer's BOS text and a space come first, so "The war ..." gives
    [BOS, " The", ...] (GPT-2: [50256, 383, ...]), the token the task prompts and the toy corpus
    start with, not [BOS, "The"(464)].
    """
    if isinstance(prompt_or_tokens, str):
        text = prompt_or_tokens
        if not text.strip():
            raise UserError("the prompt is empty.")
        bos_text = tokenizer.bos_token or ""
        if bos_text and text.startswith(bos_text):
            text, prepend_bos = text[len(bos_text) :].lstrip(" "), True
        # the prompt as a template with no fields (braces escaped), so the task's own
        # formatting adds the BOS prefix
        tpl = Template(
            name="graph",
            text=text.replace("{", "{{").replace("}", "}}"),
            bos=prepend_bos and tokenizer.bos_token_id is not None,
        )
        ids = tokenizer.encode(format_prompt(tpl, "", 0, tokenizer))
        return torch.tensor(ids, dtype=torch.long), prompt_or_tokens
    toks = torch.as_tensor(prompt_or_tokens, dtype=torch.long).reshape(-1)
    if toks.numel() == 0:
        raise UserError("the prompt has no tokens.")
    return toks, str(tokenizer.decode(toks.tolist()))


def check_context(loaded: LoadedModel, tokens: torch.Tensor) -> None:
    """A prompt longer than the model's context is an input error, not a crash."""
    n_ctx = getattr(getattr(loaded.bridge, "cfg", None), "n_ctx", None)
    if n_ctx is not None and tokens.shape[-1] > int(n_ctx):
        raise UserError(
            f"the prompt is {tokens.shape[-1]} tokens long, longer than the model's "
            f"context of {int(n_ctx)} tokens."
        )


class _AdjointRows:
    """``Attributor``'s interface (``value``, ``rows_for``) on ``FrozenAdjoint``: the rows of the
    targets (``directions`` [n_t, V]) or, without directions, of the clean active features."""

    def __init__(
        self, adj: FrozenAdjoint, value: torch.Tensor, directions: torch.Tensor | None = None
    ) -> None:
        self.adj, self.value = adj, value
        self.inject = None if directions is None else adj.target_injection(directions)

    def rows_for(self, idx: torch.Tensor) -> RowAttribution:
        if self.inject is not None:
            return self.adj.rows(self.inject[idx], None)
        return self.adj.rows(None, idx)


def _attribute(
    att: Attributor | _AdjointRows, rows: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor]:
    """Incoming edges of the entries ``rows`` of the 1-D ``att.value`` (one prompt), batched."""
    parts: dict[str, list[torch.Tensor]] = {"feat": [], "err": [], "tok": [], "pos": [], "bdec": []}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        r = att.rows_for(chunk)
        parts["feat"].append(r.features)
        parts["err"].append(r.errors[:, 0].reshape(len(chunk), -1))
        parts["tok"].append(r.tokens[:, 0])
        parts["pos"].append(r.pos_embed[:, 0])
        parts["bdec"].append(r.b_dec[:, 0])
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()}


def _select_features(
    att: Attributor | _AdjointRows,
    target_rows: dict[str, torch.Tensor],
    w_t: torch.Tensor,
    max_nodes: int,
    batch_size: int,
    allowed: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Choose and attribute features among ``allowed`` [K]: all of them, or the most influential
    ``max_nodes``."""
    K = att.value.shape[0]
    if max_nodes >= int(allowed.sum()):
        visit = allowed.nonzero()[:, 0].to(att.value.device)
        return visit, _attribute(att, visit, batch_size)
    n_t = w_t.shape[0]
    n_cols = (
        target_rows["feat"].shape[1] + target_rows["err"].shape[1] + target_rows["tok"].shape[1]
    )
    # normalised incoming rows of the attributed nodes, filled in place (targets first)
    M = torch.zeros(n_t + max_nodes, n_cols + n_t, dtype=torch.float32)
    row_nodes = torch.zeros(n_t + max_nodes, dtype=torch.long)

    def add_rows(r: dict[str, torch.Tensor], nodes: torch.Tensor, at: int) -> int:
        block = torch.cat([r["feat"], r["err"], r["tok"]], 1).float()
        M[at : at + len(nodes), :n_cols] = normalize_abs(block)
        row_nodes[at : at + len(nodes)] = nodes
        return at + len(nodes)

    filled = add_rows(target_rows, torch.arange(n_cols, n_cols + n_t), 0)
    w_rows = torch.zeros(n_t + max_nodes)
    w_rows[:n_t] = w_t.float()
    done: list[dict[str, torch.Tensor]] = []
    visited = torch.zeros(K, dtype=torch.bool)
    while int(visited.sum()) < max_nodes:
        infl = propagate(M[:filled], row_nodes[:filled], w_rows[:filled])[:K]
        infl[visited | ~allowed] = -1.0
        take = min(batch_size, max_nodes - int(visited.sum()))
        best = infl.topk(take).indices
        best = best[infl[best] > 0]
        if len(best) == 0:
            break
        r = _attribute(att, best, batch_size)
        done.append({**r, "idx": best})
        filled = add_rows(r, best, filled)
        visited[best] = True
    visit = visited.nonzero()[:, 0]
    if not done:
        return visit, _attribute(att, visit, batch_size)  # no rows, as when nothing is allowed
    idx = torch.cat([d["idx"] for d in done])
    order = torch.argsort(idx)
    out = {k: torch.cat([d[k] for d in done])[order] for k in ("feat", "err", "tok", "pos", "bdec")}
    return visit, out


def build_graph(
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    prompt_or_tokens: str | torch.Tensor | Sequence[int],
    target: str | Sequence[str] | Sequence[Target] = "greater-than",
    cfg: GraphsConfig | None = None,
    task: TaskTarget | None = None,
) -> Graph:
    """The attribution graph of one prompt, pruned and scored (see ``clt_bench.graphs``);
    ``task``: the relation, YY and answer of the ``task`` target."""
    cfg = cfg or GraphsConfig()
    t0 = time.perf_counter()
    tokens, prompt = prompt_tokens(loaded.tokenizer, prompt_or_tokens, cfg.prepend_bos)
    check_context(loaded, tokens)
    rm = build_replacement(loaded.bridge, clt, tokens)
    targets: list[Target]
    if not isinstance(target, str) and target and all(isinstance(t, Target) for t in target):
        targets = [t for t in target if isinstance(t, Target)]
    else:
        targets = make_targets(
            cast("str | Sequence[str]", target),
            loaded.tokenizer,
            prompt,
            rm.logits[0],
            cfg.demean,
            cfg.logit_probability,
            cfg.max_logits,
            task,
        )
    D = directions(targets).to(rm.dtype).to(rm.logits.device)  # [n_t, V]
    n_t, L, P = len(targets), rm.n_layers, rm.n_pos
    att_t: Attributor | _AdjointRows
    att_f: Attributor | _AdjointRows
    adj = None
    if supports_adjoint(rm):  # GPT-2 blocks: the frozen model's transpose, no autograd
        adj = FrozenAdjoint(rm)
        att_t = _AdjointRows(adj, rm.logits[0] @ D.T, D)
        att_f = _AdjointRows(adj, feature_activations(rm, "pre"))
    else:
        # two differentiated forward passes: the targets' rows never backpropagate through the
        # features' ones (nor the features' through the unembedding)
        att_t = Attributor(rm, lambda run: run.logits[0] @ D.T)
        att_f = Attributor(rm, lambda run: torch.cat(run.pre))
    tvals = att_t.value  # [n_t]
    t_rows = _attribute(att_t, torch.arange(n_t), cfg.batch_size)
    del att_t
    K = int(att_f.value.shape[0])
    w_t = torch.tensor([t.weight for t in targets], dtype=torch.float64)
    # circuit-tracer's BOS convention: BOS's features and errors are constants, not nodes
    bos_id = loaded.tokenizer.bos_token_id
    zero_bos = bool(cfg.zero_bos and bos_id is not None and int(tokens[0]) == bos_id)
    # on the CPU, with the selection's influence and visited masks (the table is on rm's device)
    bos_feat = (
        (feature_table(rm)[:, 2] == 0).cpu() if zero_bos else torch.zeros(K, dtype=torch.bool)
    )
    bos_err = torch.zeros(L * P, dtype=torch.bool)
    if zero_bos:
        bos_err[torch.arange(L) * P] = True  # error columns are layer-major: l * P + pos
    visit, f_rows = _select_features(
        att_f, t_rows, w_t, cfg.max_feature_nodes, cfg.batch_size, ~bos_feat
    )
    del att_f
    # the graph itself (adjacency, influence, pruning) is assembled on the CPU in float64
    f_rows, t_rows = ({k: v.cpu() for k, v in r.items()} for r in (f_rows, t_rows))
    bos_feat, visit = bos_feat.cpu(), torch.as_tensor(visit).cpu()
    consts = adj.constants(D) if adj is not None else constant_terms(rm, D[None])
    const_f, const_t = (c.cpu() for c in consts)
    n_f = len(visit)
    n = n_f + L * P + P + n_t
    unvisited = ~bos_feat
    unvisited[visit] = False
    A = torch.zeros(n, n, dtype=torch.float64)
    unexpl = torch.zeros(n, dtype=torch.float64)
    unexpl_abs = torch.zeros(n, dtype=torch.float64)
    const_in = torch.zeros(n, dtype=torch.float64)
    y0 = n_f + L * P + P
    for r0, rows, const in ((0, f_rows, const_f[visit]), (y0, t_rows, const_t[0])):
        m = rows["feat"].shape[0]
        if m == 0:
            continue
        A[r0 : r0 + m, :n_f] = rows["feat"][:, visit].double()
        A[r0 : r0 + m, n_f : n_f + L * P] = rows["err"].double() * ~bos_err
        A[r0 : r0 + m, n_f + L * P : y0] = rows["tok"].double()
        hidden = rows["feat"][:, unvisited].double()
        unexpl[r0 : r0 + m] = hidden.sum(1)
        unexpl_abs[r0 : r0 + m] = hidden.abs().sum(1)
        bos = rows["feat"][:, bos_feat].double().sum(1) + rows["err"][:, bos_err].double().sum(1)
        const_in[r0 : r0 + m] = const.double() + bos
    split = {"pos_embed": t_rows["pos"].double(), "b_dec": t_rows["bdec"].double()}
    split["biases_and_ln"] = const_t[0].double() - split["pos_embed"] - split["b_dec"]
    split["bos"] = const_in[y0:] - const_t[0].double()
    table = feature_table(rm)[visit][:, 1:]
    graph = Graph(
        prompt=prompt,
        tokens=tokens.cpu(),
        token_strings=[str(loaded.tokenizer.decode([t])) for t in tokens.tolist()],
        n_layers=L,
        features=table.cpu(),
        activations=feature_activations(rm)[visit].detach().cpu(),
        feature_values=feature_activations(rm, "pre")[visit].detach().cpu(),
        error_norms=(
            rm.errors[0].transpose(0, 1).norm(dim=-1) * ~bos_err.reshape(L, P).to(rm.errors.device)
        )
        .detach()
        .cpu(),
        targets=targets,
        target_values=tvals.detach().double().cpu(),
        adjacency=A,
        constant_in=const_in,
        unexplained_in=unexpl,
        unexplained_abs=unexpl_abs,
        constant_split=split,
        n_active=K,
    )
    score_graph(graph, cfg.node_threshold, cfg.edge_threshold)
    graph.meta = {
        "model": loaded.name,
        "clt": clt.spec.to_dict(),
        "node_threshold": cfg.node_threshold,
        "edge_threshold": cfg.edge_threshold,
        "max_feature_nodes": cfg.max_feature_nodes,
        "batch_size": cfg.batch_size,
        "n_backward_rows": n_t + n_f,
        "zero_bos": zero_bos,
        "demean": cfg.demean,
        "n_backward_passes": -(-n_t // cfg.batch_size) + -(-n_f // cfg.batch_size),
        "wall_seconds": round(time.perf_counter() - t0, 4),
    }
    return graph


def score_graph(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Graph:
    """Prune ``graph`` (sets influence, node and edge masks) and compute its four scores."""
    kinds, w = graph.kinds(), graph.target_weights()
    A = graph.adjacency
    node_mask, edge_mask, infl = prune(
        A,
        w,
        graph.always_kept(),
        node_threshold,
        edge_threshold,
        graph.unexplained_abs,
        features=kinds == FEATURE,
    )
    graph.influence, graph.node_mask, graph.edge_mask = infl, node_mask, edge_mask
    full = graph_scores(A, kinds, w, graph.unexplained_abs)
    pruned = pruned_scores(A, kinds, w, node_mask, edge_mask, graph.unexplained_abs)
    graph.scores = {
        "completeness": full["completeness"],
        "replacement": full["replacement"],
        "pruned_completeness": pruned["completeness"],
        "pruned_replacement": pruned["replacement"],
    }
    return graph


def target_attributions(
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    prompt_or_tokens: str | torch.Tensor | Sequence[int],
    target_directions: torch.Tensor,
    *,
    batch_size: int = 64,
    mode: str = "total",
    prepend_bos: bool = True,
) -> TargetAttribution:
    """Attribution of every source to each target direction [n_t, V] for one prompt.

    ``values`` [n_t, n_sources] = a_s * d target / d a_s through the frozen replacement model,
    along all paths (``mode="total"``; active features linearised) or direct edges only
    (``"direct"``). One target per batch row of the backward passes.
    """
    tokens, _ = prompt_tokens(loaded.tokenizer, prompt_or_tokens, prepend_bos)
    rm = build_replacement(loaded.bridge, clt, tokens)
    return target_attributions_batch(rm, target_directions, batch_size=batch_size, mode=mode)[0]


def target_attributions_many(
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    tokens: torch.Tensor,
    target_directions: torch.Tensor,
    *,
    batch_size: int = 64,
    mode: str = "total",
    prompts_per_pass: int = 32,
) -> list[TargetAttribution]:
    """``target_attributions`` for prompts of equal length ``tokens`` [n, pos].

    ``target_directions``: [n_t, V] shared or [n, n_t, V] per prompt. Up to ``prompts_per_pass``
    prompts share one forward pass and every backward pass (row b = target b in all of them).
    """
    if tokens.dim() != 2:
        raise UserError("tokens must be a [n_prompts, pos] tensor of equal-length prompts.")
    out: list[TargetAttribution] = []
    for start in range(0, tokens.shape[0], prompts_per_pass):
        sl = slice(start, start + prompts_per_pass)
        dirs = target_directions if target_directions.dim() == 2 else target_directions[sl]
        rm = build_replacement(loaded.bridge, clt, tokens[sl])
        out.extend(target_attributions_batch(rm, dirs, batch_size=batch_size, mode=mode))
    return out
