"""The headline numbers of a run and the published numbers they are set beside.

Published values come from the papers cited in docs/methods.md and from ``baselines/``; they are
for GPT-2 small (or Anthropic's research models) and are shown for context,
never used as pass/fail bars for the toy model.
"""

from __future__ import annotations

from typing import Any

from clt_bench.report.task_words import TaskWords, task_rows

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

# readable names of the headline metrics that PUBLISHED does not name
NAMES: dict[str, str] = {
    "baseline.model_prob_diff": "model prob. difference (baseline prompts)",
    "baseline.corrupted_prob_diff": "01-corrupted prob. difference (baseline prompts)",
    "baseline.normalized_faithfulness_components": "normalised faithfulness, component-level",
    "baseline.normalized_faithfulness_paths": "normalised faithfulness, path-level",
    "clt.l0": "CLT L0 (active features per token)",
    "clt.dead_fraction": "CLT dead-feature fraction",
    "clt.replacement_prob_diff": "prob. difference, CLT replacement model",
    "clt.ce_loss_recovered": "CLT cross-entropy loss recovered",
    "graphs.influence_share_yy_task_prompts": "feature influence share at YY (task prompts)",
    "features.mean_gt_corr_top20": "mean task-relation shape score, top 20 features",
    "features.interaction_share": "pair-interaction share, top features",
    "features.joint_sum_ratio_top20": "joint / summed ablation effect, top 20",
    "compare.replacement_pd_ratio": "replacement PD / model PD (held-out prompts)",
    "compare.clt_units_80": "CLT features for 80 % of PD",
    "compare.clt_units_80_error_corrupted": "CLT features for 80 % of PD, error corrupted",
    "compare.plt_units_80": "PLT features for 80 % of PD",
    "compare.plt_units_80_error_corrupted": "PLT features for 80 % of PD, error corrupted",
    "compare.neuron_units_80": "MLP neurons for 80 % of PD",
    "compare.plt_replacement_prob_diff": "prob. difference, PLT replacement model",
    "plt.replacement_prob_diff": "prob. difference, PLT replacement model (all prompts)",
    "plt.nmse": "PLT NMSE (all layers)",
    "plt.l0": "PLT L0 (active features per token)",
    "compare.families_median_feature_pd_kept": "median feature PD kept across prompt families",
}


def metric_name(metric: str) -> str:
    """The readable name of a headline metric (its key when it has none)."""
    return PUBLISHED[metric][0] if metric in PUBLISHED else NAMES.get(metric, metric)


HEADLINE_ORDER = [
    "task.prob_diff",
    "task.cutoff_sharpness",
    "task.corrupted_prob_diff",
    "baseline.model_prob_diff",
    "baseline.corrupted_prob_diff",
    "baseline.faithfulness_components_ratio",
    "baseline.normalized_faithfulness_components",
    "baseline.circuit_paths_prob_diff",
    "baseline.faithfulness_paths_ratio",
    "baseline.normalized_faithfulness_paths",
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
    "features.joint_sum_ratio_top20",
    "compare.replacement_pd_ratio",
    "compare.clt_units_80",
    "compare.clt_units_80_error_corrupted",
    "compare.plt_units_80",
    "compare.plt_units_80_error_corrupted",
    "compare.neuron_units_80",
    "compare.plt_replacement_prob_diff",
    "plt.nmse",
    "plt.l0",
    "compare.families_median_feature_pd_kept",
]


def headline_metrics(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flatten the stages' summaries into ``{"stage.metric": value}`` (numbers only)."""
    return {
        f"{stage}.{k}": v
        for stage, summary in results.items()
        if stage != "report"
        for k, v in summary.items()
        if k != "schema_version" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def headline_rows(flat: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, measured, published, source) rows: the ordered headline first, then the rest.

    A degenerate value (``"-0.414 (degenerate)"``, ``with_undefined``) gets no published figure
    beside it; the source column still names it."""
    keys = [k for k in HEADLINE_ORDER if k in flat] + sorted(
        k for k in flat if k in PUBLISHED and k not in HEADLINE_ORDER
    )
    rows = []
    for k in keys:
        label, pub, src = PUBLISHED.get(k, (k, None, ""))
        if isinstance(flat[k], str) and "degenerate" in flat[k]:
            pub = None
        rows.append((k, fmt3g(flat[k]), "" if pub is None else fmt3g(pub), src))
    return rows


# each headline number's natural partners, shown beside it: (metric, label); a trailing "*"
# matches every metric with that prefix (the top-k set sizes a run measured)
PARTNERS: dict[str, list[tuple[str, str]]] = {
    "baseline.circuit_paths_prob_diff": [
        ("baseline.corrupted_prob_diff", "corrupted, same prompts"),
        ("baseline.model_prob_diff", "model, same prompts"),
    ],
    "baseline.faithfulness_paths_ratio": [
        ("baseline.normalized_faithfulness_paths", "normalised"),
    ],
    "baseline.faithfulness_components_ratio": [
        ("baseline.normalized_faithfulness_components", "normalised"),
    ],
    **{
        f"{st}.influence_share_yy_{w}": [
            (f"{st}.influence_share_end_{w}", "END"),
            (f"{st}.influence_share_rest_{w}", "rest"),
        ]
        for st in ("graphs", "plt")
        for w in ("graph", "seed_prompt", "task_prompts")
    },
    **{
        f"{st}.interaction_share": [(f"{st}.joint_sum_ratio_top*", "joint/sum top-")]
        for st in ("features", "plt")
    },
    **{
        f"compare.{u}_units_{f}": [(f"compare.{u}_units_{f}_error_corrupted", "error corrupted")]
        for u in ("clt", "plt")
        for f in (50, 80, 90)
    },
}


def _fmt_ci(interval: Any) -> str:
    if not interval:
        return ""
    lo, hi = ("never" if v is None or v == float("inf") else fmt3g(v) for v in interval)
    return f" [{lo}, {hi}]"


def beside(
    metric: str,
    flat: dict[str, Any],
    intervals: dict[str, Any] | None = None,
    notes: dict[str, str] | None = None,
) -> str:
    """What the report sets beside ``metric``: its partners (``PARTNERS``) with their intervals,
    then its notes (why it is undefined, a prompt outside the training distribution)."""
    intervals = intervals or {}
    parts = []
    for key, label in PARTNERS.get(metric, []):
        if key.endswith("*"):
            stem = key[:-1]
            found = sorted(
                (k for k in flat if k.startswith(stem)), key=lambda k: int(k[len(stem) :])
            )
            parts += [
                f"{label}{k[len(stem) :]} {fmt3g(flat[k])}{_fmt_ci(intervals.get(k))}"
                for k in found
            ]
        elif key in flat:
            parts.append(f"{label} {fmt3g(flat[key])}{_fmt_ci(intervals.get(key))}")
        elif key in intervals:  # a units-needed count that no k reaches is null, not a number
            parts.append(f"{label} never{_fmt_ci(intervals[key])}")
    if notes and notes.get(metric):
        parts.append(notes[metric])
    return "; ".join(parts)


def metric_notes(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """metric -> a note the report prints beside it: the reason a path-level number is undefined
    (``baseline/faithfulness.json``) and graph prompts outside the training distribution."""
    notes: dict[str, str] = {}
    base = results.get("baseline") or {}
    if base.get("faithfulness_paths_defined") is False:
        why = str(base.get("faithfulness_paths_undefined_reason", ""))
        for m in ("faithfulness_paths_ratio", "normalized_faithfulness_paths"):
            notes[f"baseline.{m}"] = f"undefined: {why}"
        notes["baseline.circuit_paths_prob_diff"] = f"degenerate: {why}"
    if base.get("faithfulness_ratio_undefined_reason"):  # the model's PD is not positive
        why = str(base["faithfulness_ratio_undefined_reason"])
        for m in ("faithfulness_paths_ratio", "faithfulness_components_ratio"):
            notes[f"baseline.{m}"] = f"undefined: {why}"
        notes["baseline.random_control_ratio"] = f"undefined: {why}"
    repl_why = (results.get("compare") or {}).get("replacement_pd_ratio_undefined_reason")
    if repl_why:
        notes["compare.replacement_pd_ratio"] = f"undefined: {repl_why}"
    fam_why = (results.get("compare") or {}).get("families_undefined_reason")
    if fam_why:
        notes["compare.families_median_feature_pd_kept"] = f"undefined: {fam_why}"
    for stage in ("graphs", "plt"):
        for where, why in ((results.get(stage) or {}).get("out_of_distribution") or {}).items():
            for cls in ("yy", "end", "rest"):
                notes[f"{stage}.influence_share_{cls}_{where}"] = (
                    f"prompt outside the training distribution: {why}"
                )
    return notes


def with_undefined(flat: dict[str, Any], notes: dict[str, str]) -> dict[str, Any]:
    """The headline as the report shows it: the metrics a note calls undefined or degenerate
    become ``"undefined"`` (shown with their reason, never beside a published figure)."""
    out = dict(flat)
    for m, note in notes.items():
        if note.startswith("undefined"):
            out[m] = "undefined"
        elif note.startswith("degenerate") and m in out:
            out[m] = f"{fmt3g(out[m])} (degenerate)"
    return out


def stage_intervals(results: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """Bootstrap intervals the stages computed themselves (units needed; the top-k sets'
    joint/sum ratio), keyed by headline metric; ``None`` bounds mean "never"."""
    out: dict[str, list[Any]] = {}
    for stage, key in (("compare", "units_ci"), ("features", "joint_sum_ratio_ci")):
        for m, ci in ((results.get(stage) or {}).get(key) or {}).items():
            out[f"{stage}.{m}"] = list(ci)
    return out


def context_header(model: str) -> str:
    """The header of the column of published numbers: they are a replication target only for
    GPT-2 small itself; for any other model they are context from other models."""
    from clt_bench.models.hub import is_gpt2

    return "published (GPT-2 small)" if is_gpt2(model) else "context: GPT-2 small / other models"


def context_note(model: str) -> str:
    from clt_bench.models.hub import is_gpt2

    if is_gpt2(model):
        return (
            "Published numbers are GPT-2 small's (Hanna et al. 2023 and later work) where the "
            "definition is the same; figures from other models (Anthropic's and Goodfire's "
            "transcoders) are context, the source column names them."
        )
    return (
        f"The context column holds figures from other models -- GPT-2 small (Hanna et al. 2023, "
        f"EAP-IG) and Anthropic's and Goodfire's transcoders on real text, named in the source "
        f"column -- not numbers that {model} should reproduce: it is a different model (for the "
        f"toy and planted models, one trained to show the task on a synthetic corpus)."
    )


def fmt3g(v: Any) -> str:
    """3 significant digits (what the report shows; metrics.json keeps full precision)."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


# headline metrics that are a mean over task prompts: each gets a 95 % bootstrap interval over
# prompts where its stage stores the per-prompt values, else the report says they are not stored
MEANS_OVER_PROMPTS = {
    "task.prob_diff",
    "task.cutoff_sharpness",
    "task.corrupted_prob_diff",
    "task.logit_diff",
    "baseline.model_prob_diff",
    "baseline.corrupted_prob_diff",
    "baseline.circuit_prob_diff",
    "baseline.circuit_paths_prob_diff",
    "baseline.necessity_prob_diff",
    "clt.replacement_prob_diff",
    "plt.replacement_prob_diff",
    "compare.model_prob_diff",
    "compare.replacement_prob_diff",
    "compare.plt_replacement_prob_diff",
    "graphs.influence_share_yy_task_prompts",
    "plt.influence_share_yy_task_prompts",
}


def context_phrase(metric: str, measured: Any, model: str) -> str:
    """One phrase for the headline's context column: the figure set beside ``metric``, the model
    it is from and how far the measurement is from it ("" when nothing is set beside it)."""
    from clt_bench.models.hub import is_gpt2

    if metric not in PUBLISHED:
        return ""
    _, pub, src = PUBLISHED[metric]
    if pub is None or isinstance(measured, str):
        return src  # why nothing is set beside it
    same = is_gpt2(model) and src.startswith("GPT-2 small")
    diff = float(measured) - pub
    way = "higher" if diff > 0 else "lower"
    if same:
        return f"published {fmt3g(pub)} ({src}); measured {abs(diff):.3g} {way}"
    return f"{src}: {fmt3g(pub)}; {model} is {abs(diff):.3g} {way}"


def headline_table(report_summary: dict[str, Any], words: TaskWords | None = None) -> str:
    """Plain-text table of a finished run's headline (for the terminal); with the run's task
    ``words``, no published task / baseline figure beside a task they were not measured on."""
    flat = report_summary.get("headline", report_summary)
    rows = headline_rows(flat)
    if words is not None:
        rows = task_rows(rows, words)
    if not rows:
        return "(no headline metrics)"
    w = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{w}}  {'measured':>10}  {'context':>10}  source (model)"]
    lines += [f"{m:<{w}}  {v:>10}  {p:>10}  {s}" for m, v, p, s in rows]
    return "\n".join(lines)
