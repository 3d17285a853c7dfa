"""Path-level faithfulness, as Hanna et al. 2023 evaluated their circuit (docs/methods.md,
``baseline.faithfulness_paths_ratio``).

As in Hanna et al.'s release code (hannamw/gpt2-greater-than), the corrupted (01) input runs
everywhere and the clean input only along the circuit's paths: END heads' queries clean; YY nodes
(YY MLPs and layer-0 heads, chained in layer order; ``feed_only_end_heads`` feed the END heads
only) -> END heads' keys/values; END heads -> END MLPs (chained) -> logits; no head -> head paths.
clt-bench adds the edge ``embed@YY -> head`` that discovery may keep (a layer-0 mover head reads
the clean embedding in its keys and values); without such an edge or a YY node a circuit has no
clean input path and scores the corrupted run by construction (``clean_input_path``).

``paths_readout`` does that in one forward pass of the corrupted prompts: every head and MLP
output is reset to its corrupted value, the circuit nodes' own outputs are recorded, and each
circuit receiver's input gets ``corrupted + sum over its circuit senders of (patched -
corrupted) output``; receivers' LayerNorms are recomputed. Shapes: n prompts, d = d_model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from clt_bench.baseline.circuits import Circuit, Node
from clt_bench.baseline.patching import PatchContext, Sender, run_end, split_qkv
from clt_bench.baseline.readout import EndReadout
from clt_bench.models.bridge import FwdHooks

EMBED = "embed@YY"
LOGITS = "logits@END"


@dataclass
class PathSpec:
    """Edges (sender label, receiver label[:channel]) of a circuit given as paths.

    Senders: node labels (``a5.h1@END``, ``mlp0@YY``) or ``embed@YY``. Receivers: an MLP label, a
    head label with ``:k``/``:v`` (read at YY) or ``:qkv`` (a YY head: every channel at YY), or
    ``logits@END``. ``clean_queries``: END heads whose whole query input is the clean run's.
    """

    nodes: tuple[Node, ...]
    edges: set[tuple[str, str]] = field(default_factory=set)
    clean_queries: set[str] = field(default_factory=set)


def hanna_paths(circuit: Circuit, feed_only_end_heads: Sequence[str] = ()) -> PathSpec:
    """Hanna et al.'s path structure for ``circuit``'s nodes (see the module docstring).

    ``feed_only_end_heads``: components (``"0.3"``) of YY nodes whose only receivers are the END
    heads' keys/values."""
    end_heads = [n for n in circuit.at("END") if n.kind == "head"]
    end_mlps = [n for n in circuit.at("END") if n.kind == "mlp"]
    yy = circuit.at("YY")
    only = set(feed_only_end_heads)
    spec = PathSpec(circuit.nodes, clean_queries={h.label for h in end_heads})
    for m in end_mlps:
        spec.edges |= {(s.label, m.label) for s in end_heads + end_mlps if s.order < m.order}
    spec.edges |= {(s.label, LOGITS) for s in end_heads + end_mlps}
    for h in end_heads:
        spec.edges |= {
            (s.label, f"{h.label}:{ch}") for s in yy if s.order < h.order for ch in ("k", "v")
        }
    kept_embed = {b for a, b in circuit.edges or () if a == EMBED}
    for h in end_heads:
        if h.label in kept_embed:
            spec.edges |= {(EMBED, f"{h.label}:{ch}") for ch in ("k", "v")}
    for r in yy:
        recv = f"{r.label}:qkv" if r.kind == "head" else r.label
        spec.edges.add((EMBED, recv))
        spec.edges |= {
            (s.label, recv)
            for s in yy
            if s.order < r.order and s.component not in only and not (s.kind == r.kind == "head")
        }
    return spec


def clean_input_path(spec: PathSpec) -> bool:
    """Whether any clean input reaches the logits along ``spec``'s edges: the clean embedding at
    YY, or a clean query of an END head above layer 0 (the clean residual at END, which holds YY's
    identity once an earlier head has moved it). Without one, the path-level run is the corrupted
    run by construction."""
    layer = {n.label: n.layer for n in spec.nodes}
    starts = [EMBED] + [q for q in spec.clean_queries if layer.get(q, 0) > 0]
    reach, frontier = set(starts), list(starts)
    while frontier:
        s = frontier.pop()
        for a, b in spec.edges:
            node = b.split(":")[0]
            if a == s and node not in reach:
                reach.add(node)
                frontier.append(node)
    return LOGITS in reach


@dataclass(repr=False)  # TransformerLens names each hook by its repr: never format the tensors
class _PathRun:
    """One ``paths_readout`` pass: the hooks, and the circuit nodes' patched writes they record
    (label -> [n, d] at the node's position) as the forward pass reaches them."""

    ctx: PatchContext
    spec: PathSpec
    patched: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ctx = self.ctx
        self.pos = {"END": ctx.end_pos, "YY": ctx.yy_pos}
        self.by_label = {n.label: n for n in self.spec.nodes}
        yy = ctx.yy_pos
        self.embed_delta = ctx.base.resid_pre[0][:, yy] - ctx.source.resid_pre[0][:, yy]

    def delta(self, sender: str) -> torch.Tensor:
        if sender == EMBED:
            return self.embed_delta
        node = self.by_label[sender]
        s = Sender(node.kind, node.layer, self.pos[node.position], node.head)
        return self.patched[sender] - self.ctx.write(self.ctx.source, s)

    def incoming(self, receiver: str) -> torch.Tensor | None:
        """The summed patched - corrupted writes of ``receiver``'s circuit senders, added in the
        senders' sorted order: a set's order changes with each process's string hashing, and so
        would the float sum's last bits."""
        ds = [self.delta(s) for s, r in sorted(self.spec.edges) if r == receiver]
        return torch.stack(ds).sum(0) if ds else None

    def qkv(
        self, ch: str, heads: list[Node], layer: int, x: torch.Tensor, hook: Any
    ) -> torch.Tensor:
        x = x.clone()
        for h in heads:
            p = self.pos[h.position]
            if ch == "q" and h.label in self.spec.clean_queries:
                x[:, p, h.head] = self.ctx.base.resid_pre[layer][:, p]
                continue
            if h.position == "YY":
                add = self.incoming(f"{h.label}:qkv")
            else:
                add = self.incoming(f"{h.label}:{ch}") if ch in "kv" else None
            if add is not None:
                x[:, self.ctx.yy_pos, h.head] += add
        return x

    def z(self, heads: list[Node], layer: int, x: torch.Tensor, hook: Any) -> torch.Tensor:
        for h in heads:
            p = self.pos[h.position]
            self.patched[h.label] = x[:, p, h.head] @ self.ctx.bridge.W_O[layer, h.head]
        return self.ctx.source.z[layer]  # the residual stream stays the corrupted run's

    def mlp_in(self, mlps: list[Node], x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        for m in mlps:
            add = self.incoming(m.label)
            if add is not None:
                x[:, self.pos[m.position]] += add
        return x

    def mlp_out(self, mlps: list[Node], layer: int, y: torch.Tensor, hook: Any) -> torch.Tensor:
        for m in mlps:
            self.patched[m.label] = y[:, self.pos[m.position]].clone()
        return self.ctx.source.mlp_out[layer]

    def final(self, x: torch.Tensor, hook: Any) -> torch.Tensor:
        add = self.incoming(LOGITS)
        if add is None:
            return x
        x = x.clone()
        x[:, self.ctx.end_pos] += add
        return x

    def hooks(self) -> FwdHooks:
        hooks: FwdHooks = []
        for layer in range(int(self.ctx.bridge.cfg.n_layers)):
            heads = [n for n in self.spec.nodes if n.kind == "head" and n.layer == layer]
            mlps = [n for n in self.spec.nodes if n.kind == "mlp" and n.layer == layer]
            if heads:
                hooks += [
                    (f"blocks.{layer}.attn.hook_{c}_input", partial(self.qkv, c, heads, layer))
                    for c in "qkv"
                ]
            hooks.append((f"blocks.{layer}.attn.hook_z", partial(self.z, heads, layer)))
            if mlps:
                hooks.append((f"blocks.{layer}.ln2.hook_in", partial(self.mlp_in, mlps)))
            hooks.append((f"blocks.{layer}.hook_mlp_out", partial(self.mlp_out, mlps, layer)))
        return [*hooks, ("ln_final.hook_in", self.final)]


@torch.no_grad()
def paths_readout(ctx: PatchContext, spec: PathSpec) -> EndReadout:
    """Readout [n] of the corrupted prompts with the clean input only along ``spec``'s paths.

    ``ctx`` must have the clean run as base and the corrupted run as source."""
    hooks = _PathRun(ctx, spec).hooks()
    with split_qkv(ctx.bridge, any(n.kind == "head" for n in spec.nodes)):
        return run_end(ctx.bridge, ctx.source_tokens, ctx.end_pos, ctx.batch.answer_ids, hooks)
