"""The headline numbers of a run and the published numbers they are set beside.

Published values come from the papers cited in docs/methods.md and from ``baselines/``; they are
for GPT-2 small (or Anthropic's research models) and are shown for context,
never used as pass/fail bars for the toy model.
"""

from __future__ import annotations

from typing import Any

# headline metric -> (label, published value, where it comes from)
PUBLISHED: dict[str, tuple[str, float | None, str]] = {
    "task.prob_diff": ("model prob. difference", 0.817, "GPT-2 small, Hanna et al. 2023"),
    "task.cutoff_sharpness": ("model cutoff sharpness", 0.059, "GPT-2 small, Hanna et al. 2023"),
    "task.corrupted_prob_diff": (
        "01-corrupted prob. difference",
        -0.4566,
        "GPT-2 small, EAP-IG set (Hanna et al. 2024)",
    ),
    "baseline.faithfulness_components_ratio": (
        "circuit PD / model PD (component-level patching)",
        None,
        "no published figure is defined this way",
    ),
    "baseline.circuit_paths_prob_diff": (
        "circuit PD, path-level (Hanna's paths)",
        0.727,
        "GPT-2 small, Hanna et al. 2023 (secondary)",
    ),
    "baseline.faithfulness_paths_ratio": (
        "circuit PD / model PD, path-level (Hanna's paths)",
        0.890,
        "GPT-2 small, Hanna et al. 2023: 0.727 / 0.817 (the often-quoted 89.5 % is another "
        "ratio, see baselines/hanna2023.toml)",
    ),
    "baseline.necessity_prob_diff": (
        "PD with the circuit's components corrupted",
        None,
        "Hanna et al. 2023's -0.366 (GPT-2 small) corrupts the circuit's paths, not its "
        "components: not set beside this",
    ),
    "clt.nmse": ("CLT NMSE (all layers)", 0.115, "Anthropic 10M-feature CLT (L0 ~ 88)"),
    "clt.replacement_top1_agreement": (
        "replacement top-1 agreement",
        0.59,
        "Goodfire GPT-2 CLT (~590K features)",
    ),
    "graphs.completeness_score": (
        "graph completeness score",
        0.80,
        "Anthropic example prompt, CLT",
    ),
    "graphs.replacement_score": ("graph replacement score", 0.61, "Anthropic example prompt, CLT"),
}

HEADLINE_ORDER = [
    "task.prob_diff",
    "task.cutoff_sharpness",
    "task.corrupted_prob_diff",
    "baseline.faithfulness_components_ratio",
    "baseline.circuit_paths_prob_diff",
    "baseline.faithfulness_paths_ratio",
    "baseline.necessity_prob_diff",
    "clt.nmse",
    "clt.l0",
    "clt.dead_fraction",
    "clt.replacement_top1_agreement",
    "clt.replacement_prob_diff",
    "clt.ce_loss_recovered",
    "graphs.completeness_score",
    "graphs.replacement_score",
    "graphs.influence_share_yy_task_prompts",
    "features.mean_gt_corr_top20",
    "features.interaction_share",
    "compare.replacement_pd_ratio",
    "compare.clt_units_80",
    "compare.plt_units_80",
    "compare.neuron_units_80",
    "compare.plt_replacement_prob_diff",
    "plt.nmse",
    "plt.l0",
    "compare.families_median_feature_pd_kept",
]


def headline_metrics(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flatten the stages' summaries into ``{"stage.metric": value}`` (numbers only)."""
    flat: dict[str, Any] = {}
    for stage, summary in results.items():
        if stage == "report":
            continue
        for k, v in summary.items():
            if k in ("schema_version",):
                continue
            if isinstance(v, int | float) and not isinstance(v, bool):
                flat[f"{stage}.{k}"] = v
    return flat


def headline_rows(flat: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, measured, published, source) rows: the ordered headline first, then the rest."""
    keys = [k for k in HEADLINE_ORDER if k in flat] + sorted(
        k for k in flat if k in PUBLISHED and k not in HEADLINE_ORDER
    )
    rows = []
    for k in keys:
        label, pub, src = PUBLISHED.get(k, (k, None, ""))
        rows.append((k, _fmt(flat[k]), "" if pub is None else _fmt(pub), src))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def headline_table(report_summary: dict[str, Any]) -> str:
    """Plain-text table of a finished run's headline (for the terminal)."""
    flat = report_summary.get("headline", report_summary)
    rows = headline_rows(flat)
    if not rows:
        return "(no headline metrics)"
    w = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{w}}  {'measured':>10}  {'published':>10}  source"]
    lines += [f"{m:<{w}}  {v:>10}  {p:>10}  {s}" for m, v, p, s in rows]
    return "\n".join(lines)
