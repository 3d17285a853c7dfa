"""Evaluate a circuit: faithfulness, necessity and random circuits of the same size.

A circuit is a set of (component, position) nodes whose paths are every node-to-node path at a
shared position (plus the input embedding and the logits). With the 01 dataset as the corrupted
input, "clean input only along the circuit's paths, corrupted elsewhere" is then exactly: run the
clean input and replace the output of every (component, position) *outside* the circuit by its
corrupted value. Necessity is the complement: replace the outputs of the circuit's own nodes.
Positions before YY carry identical activations in both inputs, so only YY..END matter.

Many circuits (random controls) share one batched forward: masks are [circuits, pos, ...].
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from clt_bench.baseline.circuits import Circuit, Node, all_nodes
from clt_bench.baseline.patching import PatchContext, run_end
from clt_bench.baseline.path_faithfulness import (
    PathSpec,
    clean_input_path,
    hanna_paths,
    paths_readout,
)
from clt_bench.baseline.readout import EndReadout, metrics_of, per_example_pd
from clt_bench.models.bridge import FwdHooks

# a path-level run whose PD is within this of the corrupted run's on every prompt is that run
DEGENERATE_TOL = 1e-6


def ratio_undefined_reason(model_pd: float) -> str:
    """Why a ratio to the model's PD is undefined ("" when it is defined): it reads as a share of
    the model's task performance only when that PD is positive; for a model at or below chance on
    the task (e.g. both PDs negative, a ratio of two negatives) it is no such share."""
    if model_pd > 0:
        return ""
    return (
        f"the model's probability difference is {model_pd:.4f}, not positive: a ratio to it is "
        "no share of the model's performance"
    )


def node_masks(
    ctx: PatchContext, circuits: Sequence[Circuit], complement: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs that take the source value: heads [c, layers, pos, n_heads], MLPs [c, layers, pos].

    ``complement`` = True marks everything *outside* each circuit (faithfulness); False marks the
    circuit's own nodes (necessity).
    """
    cfg = ctx.bridge.cfg
    n_pos = ctx.base_tokens.shape[1]
    pos_of = {"END": ctx.end_pos, "YY": ctx.yy_pos}
    dev = ctx.device
    heads = torch.zeros(
        len(circuits), cfg.n_layers, n_pos, cfg.n_heads, dtype=torch.bool, device=dev
    )
    mlps = torch.zeros(len(circuits), cfg.n_layers, n_pos, dtype=torch.bool, device=dev)
    for i, c in enumerate(circuits):
        for node in c.nodes:
            p = pos_of[node.position]
            if node.kind == "head":
                heads[i, node.layer, p, node.head] = True
            else:
                mlps[i, node.layer, p] = True
    if complement:
        heads, mlps = ~heads, ~mlps
    return heads, mlps


def _take_where(x: torch.Tensor, hook: Any, mask: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """A hook: ``src`` where ``mask`` is set, the run's own value elsewhere."""
    return torch.where(mask, src, x)


def _patch_hooks(ctx: PatchContext, heads: torch.Tensor, mlps: torch.Tensor) -> FwdHooks:
    """Hooks replacing marked outputs by the source run's (rows = circuit-major x examples)."""
    c = heads.shape[0]
    n = ctx.n
    hooks: FwdHooks = []
    for layer in range(ctx.bridge.cfg.n_layers):
        hm = heads[:, layer].repeat_interleave(n, 0)[..., None]  # [c*n, pos, H, 1]
        mm = mlps[:, layer].repeat_interleave(n, 0)[..., None]  # [c*n, pos, 1]
        z_src = ctx.source.z[layer].repeat(c, 1, 1, 1)
        m_src = ctx.source.mlp_out[layer].repeat(c, 1, 1)
        for name, mask, src in (("attn.hook_z", hm, z_src), ("hook_mlp_out", mm, m_src)):
            if mask.any():
                hooks.append((f"blocks.{layer}.{name}", partial(_take_where, mask=mask, src=src)))
    return hooks


@torch.no_grad()
def patch_circuits(ctx: PatchContext, circuits: Sequence[Circuit], complement: bool) -> EndReadout:
    """Readout [n_circuits, n] of the base run with circuit (or non-circuit) outputs patched."""
    per = max(1, ctx.rows // ctx.n)
    parts = []
    for i in range(0, len(circuits), per):
        chunk = circuits[i : i + per]
        heads, mlps = node_masks(ctx, chunk, complement)
        hooks = _patch_hooks(ctx, heads, mlps)
        parts.append(
            run_end(
                ctx.bridge,
                ctx.base_tokens.repeat(len(chunk), 1),
                ctx.end_pos,
                ctx.batch.answer_ids,
                hooks,
            )
        )
    return EndReadout.cat(parts).reshape(len(circuits), ctx.n)


def random_circuits(
    circuit: Circuit, n_layers: int, n_heads: int, n: int, seed: int
) -> list[Circuit]:
    """``n`` circuits with as many heads and MLPs as ``circuit``, drawn uniformly over (component,
    position in {END, YY}), each seeded by ``seed + i``."""
    pool = all_nodes(n_layers, n_heads)
    heads = [p for p in pool if p.kind == "head"]
    mlps = [p for p in pool if p.kind == "mlp"]
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(seed + i)
        hs = [heads[j] for j in torch.randperm(len(heads), generator=g)[: circuit.n_heads]]
        ms = [mlps[j] for j in torch.randperm(len(mlps), generator=g)[: circuit.n_mlps]]
        nodes: tuple[Node, ...] = tuple(sorted(hs + ms))
        out.append(
            Circuit(
                name=f"random-{seed + i}",
                nodes=nodes,
                provenance={"source": "random", "seed": seed + i},
            )
        )
    return out


def paths_undefined_reason(
    spec: PathSpec, paths_pd: torch.Tensor, corrupted_pd: torch.Tensor
) -> str:
    """Why the path-level faithfulness of ``spec`` is undefined ("" when it is defined).

    ``paths_pd`` and ``corrupted_pd`` [n]: per-prompt PD of the path-level run and of the
    corrupted run. Undefined when no clean input reaches the logits along the circuit's paths, or
    when the run equals the corrupted run on every prompt (a score that equals
    one of its endpoints by construction is not a number)."""
    if not clean_input_path(spec):
        return (
            "the circuit has no clean input path (neither the clean embedding at YY nor a clean "
            "query above layer 0 reaches the logits along its paths), so the path-level run is "
            "the corrupted run by construction"
        )
    if float((paths_pd - corrupted_pd).abs().max()) <= DEGENERATE_TOL:
        return (
            f"the path-level run equals the corrupted run on every prompt (|PD difference| <= "
            f"{DEGENERATE_TOL:g})"
        )
    return ""


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def evaluate_circuit(
    ctx: PatchContext,
    circuit: Circuit,
    n_random: int = 10,
    seed: int = 0,
    per_prompt: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], EndReadout]:
    """Faithfulness, necessity and random-control numbers (PD and CS of each) for ``circuit``,
    and the circuit run's readout [n] (for its YY x ZZ heatmap).

    ``ctx`` must have the clean run as base and the corrupted run as source. ``per_prompt``, when
    given, receives the per-prompt PD [n] behind each mean PD (model, corrupted, circuit, path-level
    circuit, necessity), keyed like the numbers (what the report's intervals resample).
    """
    b = ctx.batch
    model = metrics_of(ctx.base.readout, b)
    corrupted = metrics_of(ctx.source.readout, b)
    cfg = ctx.bridge.cfg
    randoms = random_circuits(circuit, cfg.n_layers, cfg.n_heads, n_random, seed)
    faithful = patch_circuits(ctx, [circuit, *randoms], complement=True)
    circ = metrics_of(faithful[0], b)
    rand = [metrics_of(faithful[1 + i], b) for i in range(len(randoms))]
    necessity_run = patch_circuits(ctx, [circuit], complement=False)[0]
    necessity = metrics_of(necessity_run, b)
    spec = hanna_paths(circuit, circuit.paths.get("feed_only_end_heads", ()))
    paths_run = paths_readout(ctx, spec)
    paths = metrics_of(paths_run, b)
    undefined = paths_undefined_reason(
        spec, per_example_pd(paths_run, b), per_example_pd(ctx.source.readout, b)
    )
    if per_prompt is not None:
        runs = {
            "model_prob_diff": ctx.base.readout,
            "corrupted_prob_diff": ctx.source.readout,
            "circuit_prob_diff": faithful[0],
            "circuit_paths_prob_diff": paths_run,
            "necessity_prob_diff": necessity_run,
        }
        per_prompt.update({k: per_example_pd(r, b).double() for k, r in runs.items()})
    model_pd, corr_pd = model["prob_diff"], corrupted["prob_diff"]
    gap = model_pd - corr_pd
    nan = float("nan")
    ratio_undefined = ratio_undefined_reason(model_pd)
    rand_pd = _spread([r["prob_diff"] for r in rand]) if rand else {}
    rand_cs = _spread([r["cutoff_sharpness"] for r in rand]) if rand else {}
    total = 2 * cfg.n_layers * (cfg.n_heads + 1)
    return {
        "n_examples": ctx.n,
        "model_prob_diff": model_pd,
        "model_prob_diff_std": model["prob_diff_std"],
        "corrupted_prob_diff": corr_pd,
        "circuit_prob_diff": circ["prob_diff"],
        "circuit_prob_diff_std": circ["prob_diff_std"],
        "faithfulness_components_ratio": circ["prob_diff"] / model_pd
        if not ratio_undefined
        else None,
        "faithfulness_ratio_undefined_reason": ratio_undefined,
        "normalized_faithfulness_components": (circ["prob_diff"] - corr_pd) / gap
        if gap
        else float("nan"),
        "circuit_paths_prob_diff": paths["prob_diff"],
        "faithfulness_paths_ratio": paths["prob_diff"] / model_pd
        if not (undefined or ratio_undefined)
        else None,
        "normalized_faithfulness_paths": (paths["prob_diff"] - corr_pd) / gap
        if gap and not undefined
        else (None if undefined else nan),
        "faithfulness_paths_defined": not undefined,
        "faithfulness_paths_undefined_reason": undefined,
        "path_edges": sorted(list(e) for e in spec.edges),
        "circuit_paths_cutoff_sharpness": paths["cutoff_sharpness"],
        "n_path_edges": len(spec.edges),
        "necessity_prob_diff": necessity["prob_diff"],
        "random_control_prob_diff": rand_pd,
        "random_control_ratio": rand_pd["mean"] / model_pd
        if rand and not ratio_undefined
        else (None if ratio_undefined else nan),
        "n_random": len(randoms),
        "random_seeds": [seed + i for i in range(len(randoms))],
        "model_cutoff_sharpness": model["cutoff_sharpness"],
        "corrupted_cutoff_sharpness": corrupted["cutoff_sharpness"],
        "circuit_cutoff_sharpness": circ["cutoff_sharpness"],
        "necessity_cutoff_sharpness": necessity["cutoff_sharpness"],
        "random_control_cutoff_sharpness": rand_cs,
        "model_logit_diff": model["logit_diff"],
        "circuit_logit_diff": circ["logit_diff"],
        "circuit_size": {
            "nodes": len(circuit.nodes),
            "heads": circuit.n_heads,
            "mlps": circuit.n_mlps,
            "candidate_nodes": total,
            "fraction_kept": len(circuit.nodes) / total,
        },
        "definition": "components: circuit = clean input; every (component, position) output "
        "outside the circuit replaced by its value on the corrupted prompt (the template's "
        "counterfactual); necessity = the "
        "circuit's own outputs replaced; random = same head/MLP counts over "
        "(component, END|YY). paths (Hanna et al. 2023): corrupted input, clean "
        "only along the circuit's paths -- END heads' queries clean, YY nodes -> "
        "END heads' keys/values, END heads -> END MLPs -> logits, no head -> head "
        "paths (clt_bench.baseline.path_faithfulness)",
    }, faithful[0]
