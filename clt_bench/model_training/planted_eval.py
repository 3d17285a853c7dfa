"""The planted model's acceptance numbers: interchange-intervention accuracy (IIA) per
high-level variable, strictness of the non-circuit nodes, the circuit alone, and held-out corpus
loss (definitions and bars: docs/methods.md, "planted"). A node's strictness patches it from the
corrupted (01) run; positions before YY are equal in the two runs, so only YY..END are patched.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from clt_bench.model_training.planted_pairs import CORRUPT_YY, Pairs, hl_output
from clt_bench.models.planted import PlantedSpec
from clt_bench.models.siit import Activations, Component, PatchMask, all_components, patched, record
from clt_bench.task.metrics import prob_diff_per_example


def answer_dist(model: GPT2LMHeadModel, hidden: torch.Tensor, pairs: Pairs):
    """Probabilities of the 100 answer tokens at END (full-vocabulary softmax): [n, 100]."""
    logits = model.lm_head(hidden[:, pairs.end_pos]).float()
    return torch.softmax(logits, -1)[:, pairs.answer_ids]


def variable_mask(pairs: Pairs, spec: PlantedSpec, name: str, n_layers: int, n_heads: int):
    """The mask that patches variable ``name``'s components at its position, every example."""
    var = next(v for v in spec.variables if v.name == name)
    pos = pairs.yy_pos if var.position == "YY" else pairs.end_pos
    mask = PatchMask(len(pairs), pairs.base.shape[1], n_layers, n_heads)
    for comp in var.components:
        mask.set(slice(None), comp, [pos])
    return mask


def free_positions(spec: PlantedSpec, pairs: Pairs, comp: Component) -> list[int]:
    """Positions from YY to END where ``comp`` realises no high-level variable (strictness sites;
    before YY the base and source runs are equal, so patching there changes nothing)."""
    aligned = spec.aligned()
    name = {pairs.yy_pos: "YY", pairs.end_pos: "END"}
    length = pairs.base.shape[1]
    return [p for p in range(pairs.yy_pos, length) if (comp, name.get(p, "")) not in aligned]


def strict_nodes(
    spec: PlantedSpec, pairs: Pairs, n_layers: int, n_heads: int, single: bool = True
) -> list[tuple[str, Component, list[int]]]:
    """Non-circuit nodes: (label, component, positions) for every component at each position
    from YY to END that is not aligned there, and at all those positions at once."""
    pos_name = {pairs.yy_pos: "YY", pairs.end_pos: "END"}
    out: list[tuple[str, Component, list[int]]] = []
    for comp in all_components(n_layers, n_heads):
        free = free_positions(spec, pairs, comp)
        if not free:
            continue
        out.append((f"{comp.label}@all", comp, free))
        if single:
            out.extend((f"{comp.label}@{pos_name.get(p, p)}", comp, [p]) for p in free)
    return out


def clean_and_corrupted(model: GPT2LMHeadModel, pairs: Pairs):
    """Final hidden states of the bases and of their 01-corrupted prompts, and the corrupted
    run's activations (the source of strictness and circuit-alone patches)."""
    corrupted = pairs.base.clone()
    corrupted[:, pairs.yy_pos] = pairs.answer_ids[CORRUPT_YY]
    hid_clean, _ = record(model, pairs.base)
    hid_corr, src = record(model, corrupted)
    return hid_clean, hid_corr, src


def base_pd(model: GPT2LMHeadModel, hidden: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """[n] PD of final hidden states ``hidden`` against each base's YY."""
    p = answer_dist(model, hidden, pairs)
    return prob_diff_per_example(p.double(), pairs.base_yy)


@torch.no_grad()
def interchange_accuracy(
    model: GPT2LMHeadModel, spec: PlantedSpec, pairs: Pairs
) -> dict[str, dict[str, float]]:
    """Per variable: IIA (see the module docstring), mean TV to H(source), mean PD vs YY_source."""
    model.eval()
    n_layers, n_heads = model.config.n_layer, model.config.n_head
    _, src = record(model, pairs.source)
    h_src = hl_output(pairs.century, pairs.source_yy)
    h_base = hl_output(pairs.century, pairs.base_yy)
    out: dict[str, dict[str, float]] = {}
    for var in spec.variables:
        mask = variable_mask(pairs, spec, var.name, n_layers, n_heads)
        p = answer_dist(model, patched(model, pairs.base, src, mask), pairs)
        q = p / p.sum(-1, keepdim=True)
        tv_src = 0.5 * (q - h_src).abs().sum(-1)
        tv_base = 0.5 * (q - h_base).abs().sum(-1)
        pd_src = prob_diff_per_example(p.double(), pairs.source_yy)
        ok = (tv_src < tv_base) & (pd_src > 0)
        out[var.name] = {
            "accuracy": round(float(ok.float().mean()), 4),
            "tv_to_source": round(float(tv_src.mean()), 4),
            "prob_diff_vs_source_yy": round(float(pd_src.mean()), 4),
        }
    return out


@torch.no_grad()
def strictness(
    model: GPT2LMHeadModel,
    spec: PlantedSpec,
    pairs: Pairs,
    per_node: bool = False,
    single: bool = True,
) -> dict[str, Any]:
    """Strictness of every non-circuit node against the corrupted (01) source (``single``:
    each position on its own as well as all at once)."""
    model.eval()
    n_layers, n_heads = model.config.n_layer, model.config.n_head
    hid_clean, hid_corr, src = clean_and_corrupted(model, pairs)
    pd = {k: base_pd(model, h, pairs) for k, h in (("clean", hid_clean), ("corrupted", hid_corr))}
    gap = float((pd["clean"] - pd["corrupted"]).mean())
    scores: dict[str, float] = {}
    raw: dict[str, float] = {}
    for label, comp, positions in strict_nodes(spec, pairs, n_layers, n_heads, single):
        mask = PatchMask(len(pairs), pairs.base.shape[1], n_layers, n_heads)
        mask.set(slice(None), comp, positions)
        p = answer_dist(model, patched(model, pairs.base, src, mask), pairs)
        moved = (prob_diff_per_example(p.double(), pairs.base_yy) - pd["clean"]).abs().mean()
        raw[label] = float(moved)
        scores[label] = float(moved) / gap if gap > 0 else float("inf")
    worst = max(scores, key=scores.get)
    out: dict[str, Any] = {
        "n_nodes": len(scores),
        "mean": round(sum(scores.values()) / len(scores), 5),
        "worst": round(scores[worst], 5),
        "worst_node": worst,
        "gap": round(gap, 4),
        "prob_diff": round(float(pd["clean"].mean()), 4),
        "corrupted_prob_diff": round(float(pd["corrupted"].mean()), 4),
    }
    if per_node:
        out["per_node"] = {k: round(v, 5) for k, v in scores.items()}
        out["per_node_abs_pd_moved"] = raw
    return out


def complement_mask(spec: PlantedSpec, pairs: Pairs, n_layers: int, n_heads: int) -> PatchMask:
    """Every non-circuit node at once: each component at every position from YY to END where it
    realises no high-level variable (the baseline's component-level faithfulness run)."""
    mask = PatchMask(len(pairs), pairs.base.shape[1], n_layers, n_heads)
    for _, comp, free in strict_nodes(spec, pairs, n_layers, n_heads, single=False):
        mask.set(slice(None), comp, free)
    return mask


@torch.no_grad()
def circuit_only(model: GPT2LMHeadModel, spec: PlantedSpec, pairs: Pairs) -> dict[str, float]:
    """The circuit alone: every non-circuit node patched from the corrupted (01) run at once.
    ``faithfulness_components`` = its PD / the clean PD (the baseline stage's component-level
    ratio, on these pairs' bases)."""
    model.eval()
    n_layers, n_heads = model.config.n_layer, model.config.n_head
    hid_clean, _, src = clean_and_corrupted(model, pairs)
    mask = complement_mask(spec, pairs, n_layers, n_heads)
    circuit = patched(model, pairs.base, src, mask)
    pd = {
        k: float(base_pd(model, h, pairs).mean())
        for k, h in (("clean", hid_clean), ("circuit", circuit))
    }
    ratio = pd["circuit"] / pd["clean"] if pd["clean"] else float("nan")
    return {"prob_diff": round(pd["circuit"], 4), "faithfulness_components": round(ratio, 4)}


@torch.no_grad()
def corpus_loss(model: GPT2LMHeadModel, tokens: torch.Tensor, batch: int = 64) -> float:
    """Mean next-token cross-entropy over every position with a target; tokens [n, pos], -1 pad."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, tokens.shape[0], batch):
        t = tokens[i : i + batch]
        t = t[:, : int((t >= 0).sum(1).max())]
        logits = model(input_ids=t.clamp(min=0)).logits[:, :-1].float()
        target = t[:, 1:]
        keep = target >= 0
        total += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
        count += int(keep.sum())
    return total / max(count, 1)


def source_activations(model: GPT2LMHeadModel, tokens: torch.Tensor) -> Activations:
    """Activations of a source run, without gradients."""
    with torch.no_grad():
        return record(model, tokens)[1]
