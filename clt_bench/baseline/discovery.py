"""Circuit discovery by iterative path patching from the logits backwards (Hanna et al. 2023).

Step 1: every head and MLP at END -> logits (direct effect). Step k > 1: every head and MLP at END
and YY, and the token + position embedding at END and YY, -> the inputs of the nodes kept at step
k - 1 (an MLP's input at its position; a head's q at its own position and its k and v at YY, where
the year's identity is read). The embedding is a sender but never a node: when it is kept, the
circuit gets the edge ``embed@YY -> node`` (the clean input path of a circuit whose mover head sits
in layer 0, where no head or MLP is upstream of its keys and values), and the path-level evaluation
(``clt_bench.baseline.path_faithfulness.hanna_paths``) gives that node's keys/values the clean
embedding.
A sender is kept when corrupting its path lowers the probability difference by at least
``threshold`` x (clean PD - corrupted PD); thresholds are separate for heads and MLPs (the
embedding uses the smaller one) and recorded in the circuit's provenance.
The search stops when a step keeps nothing new or after ``max_steps`` steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from clt_bench.baseline.circuits import Circuit, Node
from clt_bench.baseline.patching import (
    PatchContext,
    Receiver,
    Sender,
    all_senders,
    path_patch,
    upstream,
)
from clt_bench.baseline.readout import per_example_pd
from clt_bench.config import BaselineConfig
from clt_bench.task.spec import RELATION_NAMES

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One path-patching sweep: effects are PD changes as a fraction of the clean-corrupted gap."""

    index: int
    receivers: list[str]
    effects: dict[str, torch.Tensor]  # position -> [n_layers, n_heads + 1] (last column: MLP)
    kept: list[Node] = field(default_factory=list)
    embed_effects: dict[str, float] = field(default_factory=dict)  # position -> effect
    kept_embed: list[str] = field(default_factory=list)  # e.g. ["embed@YY"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.index,
            "receivers": self.receivers,
            "kept": [n.label for n in self.kept],
            "kept_embed": list(self.kept_embed),
            "embed_effects_fraction_of_gap": {
                p: None if v != v else round(float(v), 6) for p, v in self.embed_effects.items()
            },
            "effects_fraction_of_gap": {
                p: [[None if v != v else round(float(v), 6) for v in row] for row in e.tolist()]
                for p, e in self.effects.items()
            },
        }


def _pos(ctx: PatchContext, name: str) -> int:
    return ctx.end_pos if name == "END" else ctx.yy_pos


def receivers_of(ctx: PatchContext, node: Node) -> list[Receiver]:
    """The inputs of ``node`` that discovery patches into."""
    if node.kind == "mlp":
        return [Receiver("mlp", node.layer, _pos(ctx, node.position))]
    own = _pos(ctx, node.position)
    out = [Receiver("head", node.layer, own, node.head, "q")]
    out += [Receiver("head", node.layer, ctx.yy_pos, node.head, ch) for ch in ("k", "v")]
    return out


def _pos_name(ctx: PatchContext, pos: int) -> str:
    return "END" if pos == ctx.end_pos else "YY"


def _node_of(s: Sender, ctx: PatchContext) -> Node:
    return Node(_pos_name(ctx, s.pos), s.layer, s.kind, s.head if s.kind == "head" else -1)


def _label_of(s: Sender, ctx: PatchContext) -> str:
    """``embed@YY`` for the embedding, the node label otherwise."""
    if s.kind == "embed":
        return f"embed@{_pos_name(ctx, s.pos)}"
    return _node_of(s, ctx).label


def sweep(
    ctx: PatchContext, receivers: list[Receiver], candidates: list[Sender]
) -> dict[Sender, float]:
    """Mean PD change (patched - base) for each candidate upstream of some receiver."""
    senders = [s for s in candidates if any(upstream(s, r) for r in receivers)]
    if not senders:
        return {}
    readout = path_patch(ctx, senders, receivers)
    pd = per_example_pd(readout, ctx.batch).mean(-1)  # [S]
    base = float(per_example_pd(ctx.base.readout, ctx.batch).mean())
    return {s: float(v) - base for s, v in zip(senders, pd.tolist(), strict=True)}


def _grid(ctx: PatchContext, eff: dict[Sender, float], gap: float) -> dict[str, torch.Tensor]:
    cfg = ctx.bridge.cfg
    out = {}
    for name in ("END", "YY"):
        g = torch.full((cfg.n_layers, cfg.n_heads + 1), float("nan"))
        for s, v in eff.items():
            if s.pos == _pos(ctx, name) and s.kind != "embed":
                g[s.layer, s.head if s.kind == "head" else cfg.n_heads] = v / gap
        out[name] = g
    return out


def discover_circuit(
    ctx: PatchContext, bcfg: BaselineConfig, model_name: str = ""
) -> tuple[Circuit, list[Step]]:
    """Run the iterative search; ``ctx`` has the clean run as base and the 01 run as source."""
    cfg = ctx.bridge.cfg
    n_layers, n_heads = int(cfg.n_layers), int(cfg.n_heads)
    clean_pd = float(per_example_pd(ctx.base.readout, ctx.batch).mean())
    corr_pd = float(per_example_pd(ctx.source.readout, ctx.batch).mean())
    gap = clean_pd - corr_pd
    if gap <= 0:
        log.warning(
            "clean PD %.3f is not above corrupted PD %.3f; discovery has no signal",
            clean_pd,
            corr_pd,
        )
        gap = max(abs(gap), 1e-9)

    def keep(s: Sender, v: float) -> bool:
        thr = {"head": bcfg.head_threshold, "mlp": bcfg.mlp_threshold}.get(
            s.kind, min(bcfg.head_threshold, bcfg.mlp_threshold)
        )
        return -v >= thr * gap

    circuit: set[Node] = set()
    steps: list[Step] = []
    edges: set[tuple[str, str]] = set()
    frontier = {"logits@END": [Receiver("logits", n_layers, ctx.end_pos)]}
    positions = [ctx.end_pos]  # step 1 sweeps the senders at END, later steps END and YY
    for index in range(1, bcfg.max_steps + 1):
        pool = all_senders(n_layers, n_heads, positions, embed=True)
        pool = [s for s in pool if s.kind == "embed" or _node_of(s, ctx) not in circuit]
        eff = sweep(ctx, [r for recv in frontier.values() for r in recv], pool)
        kept = [s for s, v in eff.items() if keep(s, v)]
        step = Step(
            index,
            list(frontier),
            _grid(ctx, eff, gap),
            kept=sorted(_node_of(s, ctx) for s in kept if s.kind != "embed"),
            embed_effects={
                _pos_name(ctx, s.pos): v / gap for s, v in eff.items() if s.kind == "embed"
            },
            kept_embed=sorted({_label_of(s, ctx) for s in kept if s.kind == "embed"}),
        )
        steps.append(step)
        log.info(
            "discovery step %d: %d senders, kept %s",
            index,
            len(eff),
            [n.label for n in step.kept] + step.kept_embed,
        )
        for s in kept:
            edges.update(
                (_label_of(s, ctx), lab)
                for lab, recv in frontier.items()
                if any(upstream(s, r) for r in recv)
            )
        if not step.kept:
            break
        circuit.update(step.kept)
        frontier = {n.label: receivers_of(ctx, n) for n in step.kept}
        positions = [ctx.end_pos, ctx.yy_pos]
    provenance = {
        "source": "discovered",
        "method": "iterative path patching from the logits backwards (Hanna et al. 2023), "
        "clean base, corrupted senders (the template's counterfactual), metric = probability "
        "difference",
        "relation": ctx.batch.relation,
        "model": model_name,
        "head_threshold": bcfg.head_threshold,
        "mlp_threshold": bcfg.mlp_threshold,
        "threshold_rule": "keep a sender if patching its paths lowers PD by >= threshold x "
        "(clean PD - corrupted PD); the embedding (a sender, never a node) uses the smaller "
        "threshold",
        "embed_edges": sorted(e for e in edges if e[0].startswith("embed@")),
        "max_steps": bcfg.max_steps,
        "steps_run": len(steps),
        "n_examples": ctx.n,
        "dataset_seed": ctx.batch.seed,
        "template": ctx.batch.template,
        "clean_prob_diff": clean_pd,
        "corrupted_prob_diff": corr_pd,
    }
    nodes = tuple(sorted(circuit))
    relation = RELATION_NAMES.get(ctx.batch.relation, ctx.batch.relation)
    desc = f"{relation} circuit of {model_name or 'the model'} found by path patching"
    return Circuit(
        "discovered",
        nodes,
        provenance=provenance,
        model=model_name,
        description=desc,
        edges=tuple(sorted(edges)),
    ), steps
