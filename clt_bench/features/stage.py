"""The features stage: the top-K CLT features by influence on the task's target, scored.

Inputs: the CLT (``<run>/clt``), the baseline circuit (``<run>/baseline/circuit.json``, optional:
without it the circuit columns are empty), the held-out corpus rows (``<run>/activations``).
Prompts: one balanced discovery-set prompt per YY (``graphs.n_prompts``). Writes
``<run>/features/`` (docs/architecture.md); heatmaps are [K, rows, A]: rows YY = 2..98 below the
task's answer count A, columns its A answers.

Per-feature columns (``clt_bench.features.shape_scores`` has the shape scores and the label rule):
influence (sum over prompts of |total attribution to the shift-invariant logit difference of the
task's relation, ``clt_bench.graphs.targets``|), logit_diff_contribution and pd_contribution (mean
over prompts of its total attribution to the logit difference / its first-order contribution to PD),
pd_direct_contribution (the same through its direct effect on the END residual only: the
first-order counterpart of the constrained ablation), delta_pd_constrained (zeroed, everything
else frozen) / delta_pd_free (removed from the real model) (``ablation``), position
(where its attribution sits: YY, END or other), act_position (where its activation sits),
layers_written, main_write_layer (the written layer carrying most of its effect),
circuit_mlp_share (share of its |effect| written into the circuit's MLPs at its position), via
(those MLP nodes with share >= 0.1; for a feature away from END also the circuit's END heads
above its layer, the only circuit route from its position to END), contexts (top corpus snippets).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clt_bench.activations.stage import heldout_rows, load_heldout
from clt_bench.artifacts import FeatureRanking, save_ranking
from clt_bench.baseline.circuit_overlap import per_component_share
from clt_bench.baseline.circuits import Circuit, load_run_circuit
from clt_bench.clt.circuit_tracer_io import load_run_clt
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.config import FeaturesConfig, RunConfig
from clt_bench.errors import UserError
from clt_bench.features import table
from clt_bench.features.ablation import constrained_delta_pd_frozen, free_delta_pd
from clt_bench.features.contexts import top_contexts
from clt_bench.features.interactions import (
    joint_ablation,
    pair_interactions,
    set_interactions,
    set_sizes,
    write_interactions,
)
from clt_bench.features.shape_scores import (
    LABELS,
    YY_VALUES,
    ActivationProfile,
    LabelRule,
    activation_profile,
    label_decision,
    label_key,
    labels_testable,
    shape_scores,
)
from clt_bench.features.task_attributions import (
    POS_CLASSES,
    TaskAttributions,
    feature_activations_matrix,
    feature_heatmap,
    influence_ranking,
    one_per_yy,
    per_feature_sums,
    task_attributions,
)
from clt_bench.io import json_safe, run_metadata, save_tensors, write_json, write_text
from clt_bench.models import LoadedModel
from clt_bench.task.dataset import TaskBatch
from clt_bench.task.metrics import heatmap_rows
from clt_bench.task.spec import RELATION_NAMES, RELATION_WORDS, load_task
from clt_bench.task.stage import load_task_batch

log = logging.getLogger(__name__)


def task_prompts(cfg: RunConfig, loaded: LoadedModel) -> TaskBatch:
    """One balanced discovery-set prompt per YY (``graphs.n_prompts`` of them)."""
    return one_per_yy(load_task_batch(cfg, loaded, "discovery"), cfg.graphs.n_prompts)


def _via(position: str, layer: int, shares: dict[str, float], circuit: Circuit | None) -> str:
    if circuit is None:
        return ""
    parts = [k for k, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v >= 0.1]
    if position != "END":
        parts += [n.label for n in circuit.at("END") if n.kind == "head" and n.layer >= layer]
    return " ".join(parts)


def feature_rows(
    att: TaskAttributions,
    keys: np.ndarray,
    influence: np.ndarray,
    clt: CrossLayerTranscoder,
    circuit: Circuit | None,
    rule: LabelRule,
    relation: TaskRelation,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The table rows (without ablations and contexts) and the heatmaps [K, rows, A] (YY rows and
    answers of ``relation``); labels relative to the task's ``relation``."""
    sums = per_feature_sums(att, keys)
    heat = (
        np.stack([feature_heatmap(att, int(k), relation.rows) for k in keys])
        if len(keys)
        else np.zeros((0, len(relation.rows), att.n_answers))
    )
    rows = []
    for i, key in enumerate(keys):
        layer, fid = att.split_key(int(key))
        sc = shape_scores(heat[i], relation.rows, *relation.args)
        prof = activation_profile(
            feature_activations_matrix(att, int(key)), att.yy, att.yy_pos, att.end_pos
        )
        decision = label_decision(sc, prof.yy_fraction, rule, relation.relation)
        rows.append(
            {
                "rank": i + 1,
                "feature": f"L{layer}/{fid}",
                "layer": layer,
                "feature_id": fid,
                "label": decision.label,
                "secondary_label": decision.secondary,
                "runner_up": decision.runner_up,
                "runner_up_score": decision.runner_up_score,
                "runner_up_partial": decision.runner_up_partial,
                "label_margin": decision.margin,
                "influence": float(influence[i]),
                "logit_diff_contribution": float(sums["logit_diff"][i]),
                "pd_contribution": float(sums["pd"][i]),
                "pd_direct_contribution": float(sums["pd_direct"][i]),
                "delta_pd_constrained": float("nan"),
                "delta_pd_free": float("nan"),
                **sc.to_dict(),
                "zz_range": f"{sc.zz_lo:02d}-{sc.zz_hi:02d}" if sc.zz_lo >= 0 else "",
                **_activation_columns(prof),
                **_write_columns(layer, sums["pos"][i], sums["write"][i], clt, circuit),
                "n_prompts_active": int(sums["n_prompts"][i]),
                "contexts": "",
            }
        )
    return rows, heat


def _activation_columns(prof: ActivationProfile) -> dict[str, Any]:
    """Where the feature fires: over YY values and over positions."""
    return {
        "yy_fraction": prof.yy_fraction,
        "yy_lo": prof.yy_lo,
        "yy_hi": prof.yy_hi,
        "yy_range": f"{prof.yy_lo:02d}-{prof.yy_hi:02d}" if prof.yy_lo >= 0 else "",
        "yy_entropy": prof.yy_entropy,
        "act_share_yy": prof.share_yy,
        "act_share_end": prof.share_end,
        "act_share_other": prof.share_other,
        "act_position": prof.position,
    }


def _write_columns(
    layer: int,
    pos: np.ndarray,
    write: np.ndarray,
    clt: CrossLayerTranscoder,
    circuit: Circuit | None,
) -> dict[str, Any]:
    """Where the feature's attribution sits (``pos``: per position class) and where it writes
    (``write``: per layer), and through which circuit nodes."""
    pos_mass = np.abs(pos)
    position = POS_CLASSES[int(pos_mass.argmax())] if pos_mass.sum() > 0 else "none"
    shares = per_component_share(position, write, circuit) if circuit is not None else {}
    written = clt.target_layers(layer)
    return {
        "position": position,
        "share_yy": float(pos_mass[0] / pos_mass.sum()) if pos_mass.sum() else 0.0,
        "share_end": float(pos_mass[1] / pos_mass.sum()) if pos_mass.sum() else 0.0,
        "layer_read": layer,
        "layers_written": f"{written[0]}-{written[-1]}",
        "main_write_layer": int(np.abs(write).argmax()),
        "circuit_mlp_share": float(sum(shares.values())) if circuit is not None else float("nan"),
        "via": _via(position, layer, shares, circuit),
    }


def label_counts(
    rows: list[dict[str, Any]], column: str = "label", suffix: str = ""
) -> dict[str, int]:
    """``{label_key(label) + suffix: count}`` for every label of ``LABELS`` (0 when absent)."""
    counts = Counter(r[column] for r in rows)
    return {label_key(lab) + suffix: int(counts.get(lab, 0)) for lab in LABELS}


ALL_ACTIVE = "_all_active"  # suffix of the label counts over every active feature


def all_feature_labels(
    att: TaskAttributions,
    keys: np.ndarray,
    rule: LabelRule,
    relation: TaskRelation | None = None,
) -> list[str]:
    """The label of every feature in ``keys`` (all active ones, not only the top K by influence:
    features that fire on one prompt never reach the top K by summed influence); their partial
    correlations come from inner products (``shape_scores(fast=True)``: ~5x faster here)."""
    rel = relation or TaskRelation()
    return [
        label_decision(
            shape_scores(feature_heatmap(att, int(k), rel.rows), rel.rows, *rel.args, fast=True),
            activation_profile(
                feature_activations_matrix(att, int(k)), att.yy, att.yy_pos, att.end_pos
            ).yy_fraction,
            rule,
            rel.relation,
        ).label
        for k in keys
    ]


@dataclass(frozen=True)
class TaskRelation:
    """The task's relation, the heatmaps' YY rows (``rows``: 2..98 below the answer count) and,
    for ``exact``, each row's answer (``answers``, -1 where no prompt has that YY): what the label
    templates are relative to."""

    relation: str = "gt"
    answers: np.ndarray | None = None
    rows: np.ndarray = field(default_factory=lambda: YY_VALUES)

    @property
    def args(self) -> tuple[str, np.ndarray | None]:
        return self.relation, self.answers

    @classmethod
    def of(cls, batch: TaskBatch) -> TaskRelation:
        rows = heatmap_rows(batch.n_answers)
        answers = batch.row_answers(rows)
        return cls(batch.relation, None if answers is None else np.array(answers), np.array(rows))


@torch.no_grad()
def model_heatmap(
    loaded: LoadedModel, batch: TaskBatch, rows: np.ndarray = YY_VALUES
) -> np.ndarray:
    """[rows, A] the model's own mean log p(ZZ) per YY (full-vocabulary softmax; NaN rows for a
    YY without a prompt): where labels_testable looks for round-number and parity structure."""
    from clt_bench.features.ablation import end_logits_via

    bridge = loaded.bridge
    logits = end_logits_via(bridge, lambda: bridge(batch.clean.to(loaded.device)))
    logp = torch.log_softmax(logits.double(), -1)[:, batch.answer_ids.to(logits.device)]
    logp = logp.cpu().numpy()
    yy = batch.yy.cpu().numpy()
    heat = np.full((len(rows), batch.n_answers), np.nan)
    for r, y in enumerate(rows):
        if (yy == y).any():
            heat[r] = logp[yy == y].mean(0)
    return heat


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra = np.argsort(np.argsort(a[ok])).astype(float)
    rb = np.argsort(np.argsort(b[ok])).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def ablate(
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    att: TaskAttributions,
    keys: np.ndarray,
    batch: TaskBatch,
    rows: list[dict[str, Any]],
    max_prompts: int,
    progress: bool,
) -> None:
    """Each selected feature zeroed with everything else frozen (constrained) and removed from
    the real model (free): ``delta_pd_constrained`` and ``delta_pd_free`` of its row."""
    feats = [att.split_key(int(k)) for k in keys]
    active = [np.unique(att.pair_prompt[att.pair_key == k]) for k in keys]
    W_U = loaded.bridge.W_U.detach()
    b_U = getattr(loaded.bridge, "b_U", None)
    d_c = constrained_delta_pd_frozen(
        att, [int(k) for k in keys], W_U, None if b_U is None else b_U.detach(), batch
    )
    acts = [feature_activations_matrix(att, int(k)) for k in keys]
    d_f = free_delta_pd(
        loaded.bridge, clt, batch, feats, acts, active, max_prompts=max_prompts, progress=progress
    )
    for r, c, f in zip(rows, d_c, d_f, strict=True):
        r["delta_pd_constrained"], r["delta_pd_free"] = float(c), float(f)


def interactions(
    fc: FeaturesConfig,
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    att: TaskAttributions,
    keys: np.ndarray,
    batch: TaskBatch,
    rows: list[dict[str, Any]],
    out: Path,
) -> tuple[float, list[dict[str, float]]]:
    """Do the top ``features.interaction_top`` features act additively, in pairs and as whole
    sets (``clt_bench.features.interactions``)? (interaction share, per-set rows); NaN and no
    rows for fewer than two features."""
    feats = [att.split_key(int(k)) for k in keys]
    n_int = min(fc.interaction_top, len(feats))
    if n_int <= 1:
        return float("nan"), []
    int_acts = [feature_activations_matrix(att, int(k)) for k in keys[:n_int]]
    inter = pair_interactions(loaded.bridge, clt, batch, feats[:n_int], int_acts)
    write_interactions(inter, [r["feature"] for r in rows[:n_int]], out)
    ks = set_sizes(n_int)  # ... and as whole sets (pairwise additivity says nothing of sets)
    joint = joint_ablation(loaded.bridge, clt, batch, feats[:n_int], int_acts, ks)
    sets = set_interactions(
        inter["single_per_prompt"], joint, ks, fc.curve_bootstrap, fc.curve_seed
    )
    write_text(out / "interaction_sets.csv", pd.DataFrame(sets).to_csv(index=False))
    return float(inter["interaction_share"]), sets


def add_contexts(
    cfg: RunConfig,
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    run_dir: Path,
    feats: list[tuple[int, int]],
    rows: list[dict[str, Any]],
) -> None:
    """Each feature's top held-out corpus snippets, in its row's ``contexts``."""
    try:
        held = [load_heldout(run_dir)]
    except UserError:
        held = heldout_rows(cfg, loaded)
    ctxs = top_contexts(loaded.bridge, clt, loaded.tokenizer, held, feats, cfg.features.n_contexts)
    for r, c in zip(rows, ctxs, strict=True):
        r["contexts"] = " || ".join(f"{s} ({v:.2f})" for v, s in c)


def features_md_header(
    fc: FeaturesConfig, rule: LabelRule, batch: TaskBatch, n_rows: int, not_testable: list[str]
) -> str:
    """The title and explanation above ``features.md``'s table."""
    return (
        f"# Top {n_rows} CLT features by influence on the "
        f"{RELATION_NAMES[batch.relation]} logit difference (template '{batch.template}')"
        f"\n\n{len(batch)} prompts (one per YY), heatmaps: {fc.heatmap_mode} attribution; "
        f"labels relative to the task's relation {RELATION_WORDS[batch.relation]} "
        f"(column gt = correlation with it; anti-task = against it), by the rule in "
        f"clt_bench/features/shape_scores.py (thresholds: gt {fc.gt_corr}, "
        f"anti {fc.anti_corr}, large-ZZ {fc.large_zz_corr}, parity {fc.parity_corr}, "
        f"multiple-of-5 {fc.mult5_corr}, narrow < {fc.narrow_yy_fraction} of YY, partial "
        f"{rule.partial_corr}, range < {rule.gated_yy_fraction} of YY). Shape "
        f"scores are row-centred: each YY row of the heatmap and of the template loses its "
        f"mean over ZZ before correlating, so a shift of every ZZ of a row scores 0. Not "
        f"testable on this model (its own log p(ZZ|YY) shows no such structure): "
        f"{', '.join(not_testable) or 'none'}."
    )


def features_summary(
    rows: list[dict[str, Any]],
    n_prompts: int,
    n_active: int,
    att: TaskAttributions,
    labels_all: list[str],
    infl: np.ndarray,
    infl_all: np.ndarray,
    model_scores: Any,
    not_testable: list[str],
    sets: list[dict[str, float]],
    interaction_share: float,
) -> dict[str, Any]:
    """The features stage's headline numbers (the report's ``features.*``)."""
    top20 = rows[:20]
    summary: dict[str, Any] = {
        "n_prompts": n_prompts,
        "n_active_features": n_active,
        "n_selected": len(rows),
        "influence_share_top_k": float(infl.sum() / infl_all.sum()) if infl_all.sum() else 0.0,
        **label_counts(rows),
        **label_counts([{"label": lab} for lab in labels_all], suffix=ALL_ACTIVE),
        # the model's own log p(ZZ | YY): is there round-number / parity structure to find?
        "model_mult5_partial": model_scores.mult5_partial,
        "model_parity_partial": model_scores.parity_partial,
        "not_testable": not_testable,
        "mean_gt_corr_top20": float(np.mean([r["gt_corr"] for r in top20])) if top20 else 0.0,
        "pd_contribution_top_k": float(sum(r["pd_contribution"] for r in rows)),
        "clean_prob_diff": att.clean_prob_diff,
        # agreement of attribution and intervention, like with like: the direct first-order
        # contribution vs the constrained ablation (everything else frozen: a direct effect),
        # the total (linearised) contribution vs the free ablation (the real model: total)
        "spearman_direct_contribution_vs_constrained_ablation": _spearman(
            np.array([r["pd_direct_contribution"] for r in rows]),
            -np.array([r["delta_pd_constrained"] for r in rows]),
        ),
        "spearman_total_contribution_vs_free_ablation": _spearman(
            np.array([r["pd_contribution"] for r in rows]),
            -np.array([r["delta_pd_free"] for r in rows]),
        ),
        "spearman_constrained_vs_free": _spearman(
            np.array([r["delta_pd_constrained"] for r in rows]),
            np.array([r["delta_pd_free"] for r in rows]),
        ),
        # pair ablations of the top features vs the sum of their single ablations
        "interaction_share": interaction_share,
        # the top-k set removed together vs the sum of its single removals (1 = additive)
        **{f"joint_sum_ratio_top{s['k']}": s["joint_sum_ratio"] for s in sets},
        **{f"joint_dpd_top{s['k']}": s["joint_dpd"] for s in sets},
        **{f"sum_single_dpd_top{s['k']}": s["sum_single_dpd"] for s in sets},
        # nested (not headline numbers): the report sets each interval beside its ratio
        "joint_sum_ratio_ci": {
            f"joint_sum_ratio_top{s['k']}": [s["ci_lo"], s["ci_hi"]] for s in sets
        },
        "top_feature": rows[0]["feature"] if rows else "",
        "top_feature_label": rows[0]["label"] if rows else "",
    }
    return summary


def write_heatmaps(
    cfg: RunConfig,
    heat: np.ndarray,
    rows: list[dict[str, Any]],
    out: Path,
    relation: TaskRelation | None = None,
) -> tuple[list[str], Path | None]:
    """``heatmaps.safetensors`` (every selected feature; an exact task's answer per row beside
    them, ``answers``), a PNG per top ``features.n_plots`` feature and their grid; (the PNGs'
    names, the grid's path). ``relation.rows``: the heatmaps' YY rows; their width is the task's
    answer count; ``relation.answers``: what the heatmaps mark (else the ZZ = YY diagonal)."""
    fc, rel = cfg.features, relation or TaskRelation()
    yy_list = [int(y) for y in rel.rows]
    meta = {"rows": f"YY {yy_list[0]}..{yy_list[-1]}", "cols": f"ZZ 0..{heat.shape[-1] - 1:02d}"}
    tensors = {"heatmaps": torch.from_numpy(heat).float()}
    if rel.answers is not None:
        tensors["answers"] = torch.from_numpy(rel.answers).long()
    save_tensors(out / "heatmaps.safetensors", tensors, metadata={**meta, "mode": fc.heatmap_mode})
    spec = load_task(cfg.task.task)
    axes = (spec.question_label, spec.answer_label)
    pngs = table.heatmap_pngs(heat, rows, out, fc.n_plots, yy_list, axes, rel.answers)
    n_grid = min(fc.n_plots, 16)
    grid = table.heatmap_grid(heat, rows, out / "heatmap_grid.png", n_grid, yy_list, rel.answers)
    return pngs, grid


def run_features_stage(
    cfg: RunConfig,
    loaded: LoadedModel,
    run_dir: Path,
    clt: CrossLayerTranscoder | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Select and score the top-K features; write ``<run>/features/``; returns metrics."""
    t0 = time.perf_counter()
    fc = cfg.features
    if fc.top_k <= 0:
        raise UserError("features.top_k must be positive.")
    run_dir = Path(run_dir)
    out = run_dir / "features"
    clt = clt if clt is not None else load_run_clt(run_dir, device=loaded.device)
    if (clt.n_layers, clt.spec.d_model) != (loaded.n_layers, loaded.d_model):
        raise UserError(
            f"the CLT has {clt.n_layers} layers x d_model {clt.spec.d_model}; the "
            f"model has {loaded.n_layers} x {loaded.d_model}."
        )
    circuit = load_run_circuit(run_dir)
    batch = task_prompts(cfg, loaded)
    att = task_attributions(
        loaded.bridge,
        clt,
        batch,
        prompts_per_pass=fc.prompts_per_pass,
        heatmap_mode=fc.heatmap_mode,
        progress=progress,
    )
    t_attr = time.perf_counter() - t0
    keys_all, infl_all = influence_ranking(att)
    keys, infl = keys_all[: fc.top_k], infl_all[: fc.top_k]
    rule = LabelRule.from_config(fc)
    relation = TaskRelation.of(batch)
    rows, heat = feature_rows(att, keys, infl, clt, circuit, rule, relation)
    labels_all = all_feature_labels(att, keys_all, rule, relation)
    model_scores = shape_scores(
        model_heatmap(loaded, batch, relation.rows), relation.rows, *relation.args
    )
    testable = labels_testable(model_scores)
    feats = [att.split_key(int(k)) for k in keys]
    t1 = time.perf_counter()
    if fc.ablations and feats:
        ablate(loaded, clt, att, keys, batch, rows, fc.ablation_prompts, progress)
    t_abl = time.perf_counter() - t1
    interaction_share, sets = interactions(fc, loaded, clt, att, keys, batch, rows, out)
    if fc.n_contexts > 0 and feats:
        add_contexts(cfg, loaded, clt, run_dir, feats, rows)
    summary_not_testable = [lab for lab, ok in testable.items() if not ok]
    table.write_csv(rows, out / "features.csv")
    header = features_md_header(fc, rule, batch, len(rows), summary_not_testable)
    write_text(out / "features.md", f"{header}\n\n{table.feature_markdown(rows)}")
    pngs, grid = write_heatmaps(cfg, heat, rows, out, relation)
    save_ranking(
        run_dir,
        FeatureRanking(
            features=[[int(a), int(b)] for a, b in feats],
            influence=infl.tolist(),
            extended=[list(att.split_key(int(k))) for k in keys_all[: 4 * fc.top_k]],
            extended_influence=infl_all[: 4 * fc.top_k].tolist(),
            write_effects=[[float(x) for x in w] for w in per_feature_sums(att, keys)["write"]],
            pd_contributions=[float(r["pd_contribution"]) for r in rows],
            positions=[r["position"] for r in rows],
            n_prompts=len(batch),
            n_active_features=int(len(keys_all)),
        ),
    )
    counts = Counter(r["label"] for r in rows)
    summary = features_summary(
        rows,
        len(batch),
        int(len(keys_all)),
        att,
        labels_all,
        infl,
        infl_all,
        model_scores,
        summary_not_testable,
        sets,
        interaction_share,
    )
    metrics = {
        **summary,
        "heatmap_mode": fc.heatmap_mode,
        "label_counts": dict(counts),
        "label_counts_all_active": dict(Counter(labels_all)),
        "circuit": circuit.name if circuit is not None else None,
        "heatmap_pngs": pngs,
        "heatmap_grid": grid.name if grid is not None else None,
        "seconds": {
            "attribution": round(t_attr, 2),
            "ablations": round(t_abl, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
        **run_metadata(config=fc, seeds={"task": batch.seed}),
    }
    write_json(out / "metrics.json", json_safe(metrics))
    log.info("features stage wrote %s", out)
    return json_safe(summary)
