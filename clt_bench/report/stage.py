"""The report stage: one self-contained HTML page, ``summary.md`` and ``metrics.json``.

``metrics.json`` holds the schema version, config, package versions, git commit, seeds and the
flat ``headline`` dict (``"stage.metric": value``) that ``clt-bench check`` compares with the
reference.
"""

from __future__ import annotations

import html
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clt_bench.artifacts import load_stage_record
from clt_bench.io import read_json, run_metadata, write_json, write_text
from clt_bench.report.assets import read as _asset
from clt_bench.report.explore import features_html, graph_html
from clt_bench.report.figure_html import figure_html
from clt_bench.report.headline import (
    MEANS_OVER_PROMPTS,
    beside,
    context_header,
    context_note,
    context_phrase,
    headline_metrics,
    headline_rows,
    metric_name,
    metric_notes,
    stage_intervals,
    with_undefined,
)
from clt_bench.report.links import definition_html, methods_anchor
from clt_bench.report.sanity import banner_html, check_task, displayed
from clt_bench.report.sanity import to_json as sanity_json
from clt_bench.report.tables import csv_table, fmt3
from clt_bench.report.task_words import task_context, task_rows, task_words_or_default
from clt_bench.run_context import RunContext

# stage folder -> (title, PNG globs to embed in order, CSV tables to show, intro text); titles and
# intros name the run's task through {placeholders} (``report.task_words.TaskWords``)
SECTIONS: list[tuple[str, str, list[str], list[str], str]] = [
    (
        "task",
        "The task: {task} ({relation_name}, template {template}) on the model",
        ["heatmap.png", "families_heatmap.png"],
        ["families.csv"],
        "Mean probability of each answer ({answer_label}) for each {question_label} "
        "(full-vocabulary softmax, not renormalised; each row drawn divided by its maximum). "
        "Correct answers ({correct}) lie {correct_side}. The families table scores the same "
        "model on every prompt family and template of the task file, each with its own "
        "counterfactual and relation.",
    ),
    (
        "baseline",
        "The known circuit (path patching)",
        [
            "circuit*.png",
            "*faithful*.png",
            "path_patching*.png",
            "*heatmap*.png",
            "neuron*.png",
            "units*.png",
        ],
        ["*units*.csv"],
        "Hanna et al.'s procedure rebuilt: iterative path patching from the logits with the "
        "{corrupted} prompts, then faithfulness (clean only along the circuit), necessity "
        "(corrupted only along the circuit) and random circuits of the same size.",
    ),
    (
        "clt",
        "The transcoder",
        ["*.png"],
        [],
        "Reconstruction and replacement quality of the trained transcoder on held-out text.",
    ),
    (
        "graphs",
        "Attribution graph",
        ["*.png"],
        [],
        "Local replacement model (attention patterns and LayerNorm denominators frozen, error node "
        "per layer and position), pruned by influence. Limitation: with attention frozen, "
        "computation routed through query-key patterns is invisible to the graph.",
    ),
    (
        "features",
        "Top features by influence on the {relation_name} target",
        ["*grid*.png", "*summary*.png", "*labels*.png", "interactions.png"],
        ["features.csv"],
        "Each feature's YY x ZZ logit-attribution heatmap, specificity scores, ablation effects "
        "and label (rule and thresholds in the run config's [features] table).",
    ),
    (
        "plt",
        "Per-layer transcoders (PLT) beside the CLT",
        ["features/heatmap_grid.png", "graphs/*.png", "clt/training_curves.png"],
        [],
        "The same pipeline with per-layer transcoders (the [plt] section; by default the same "
        "number of features per layer as the CLT, so matched in total features, not in L0) on "
        "the same activations, prompts and graph prompt.",
    ),
    (
        "compare",
        "Transcoder features vs the circuit",
        ["*.png"],
        [
            "ground_truth.csv",
            "transcoders.csv",
            "overlap.csv",
            "families.csv",
            "feature_generalisation.csv",
        ],
        "How much of the features' influence lies inside the circuit's components, node overlap, "
        "and how many units (features vs neurons) recover the probability difference. On a model "
        "with a planted circuit, the first table grades CLT features, PLT features and MLP "
        "neurons against it like for like (definitions: docs/methods.md).",
    ),
    (
        "stability",
        "Stability across CLT seeds",
        ["heatmaps_stable.png"],
        ["seeds.csv", "labels.csv", "feature_generalisation_stable.csv", "metrics_over_seeds.csv"],
        "Features of each seed's top set matched to every other seed by decoder direction (one-"
        "to-one per layer); a feature is stable when every match has cosine >= the threshold "
        "below. Label counts and headline metrics are mean +- sd over CLT seeds (a spread over "
        "transcoder seeds, not a bootstrap over prompts).",
    ),
]

MAX_IMAGES = 8


def _has_section(ctx: RunContext, stage: str) -> bool:
    """The run has ``stage``'s folder (the stability stage's only with seeds)."""
    if stage == "stability" and not ctx.results.get(stage, {}).get("enabled", True):
        return False
    return (ctx.run_dir / stage).is_dir()


def _images(folder: Path, globs: list[str]) -> list[Path]:
    # each image once, in the order of the first glob that finds it
    return list(dict.fromkeys(p for g in globs for p in sorted(folder.glob(g))))[:MAX_IMAGES]


def _summary_table(summary: dict[str, Any]) -> str:
    """A stage's scalar summary as key/value pairs in columns (each pair on one line)."""
    cells = "".join(
        f"<div title='{html.escape(str(k), quote=True)} {html.escape(fmt3(v), quote=True)}'>"
        f"<span class='k'>{html.escape(str(k))}</span> <b>{html.escape(fmt3(v))}</b></div>"
        for k, v in summary.items()
        if isinstance(v, int | float | str) and len(fmt3(v)) <= 40
    )
    return f"<div class='kvgrid'>{cells}</div>" if cells else ""


def _scalars(path: Path) -> dict[str, Any]:
    """The top-level scalars of a stage's own JSON (for sections that are not pipeline stages)."""
    if not path.is_file():
        return {}
    data = read_json(path)
    return {k: v for k, v in data.items() if isinstance(v, int | float | str)}


def headline_intervals(
    run_dir: Path, headline: dict[str, Any], seed: int = 0, n_boot: int = 2000
) -> dict[str, list[float]]:
    """95 % percentile bootstrap intervals over prompts (seeded) for the headline metrics that are
    means over prompts and whose per-prompt values the stages stored."""
    from clt_bench.report.compare_runs import per_prompt_values
    from clt_bench.stats import bootstrap_ci

    numbers = {k: float(v) for k, v in headline.items() if isinstance(v, int | float)}
    values, _ = per_prompt_values(run_dir, numbers)
    return {m: list(bootstrap_ci(v, n_boot=n_boot, seed=seed)) for m, v in values.items()}


def _ci(interval: list[float] | None) -> str:
    if not interval:
        return ""
    lo, hi = ("never" if v is None or v == float("inf") else f"{v:.3g}" for v in interval)
    return f"[{lo}, {hi}]"


def _ci_cell(metric: str, value: Any, interval: list[float] | None) -> str:
    """The interval, or for a mean over prompts whose per-prompt values no stage stored, why it
    has none; nothing for an undefined or degenerate value (not a number)."""
    if isinstance(value, str):
        return ""
    if interval:
        return _ci(interval)
    return "not stored per prompt" if metric in MEANS_OVER_PROMPTS else ""


LONG = 72  # characters of a context or note cell shown before it is cut (full text on hover)


def _text_cell(text: str) -> str:
    if len(text) <= LONG:
        return f"<td class='meta wrap'>{html.escape(text)}</td>"
    cut = text[: LONG - 1].rsplit(" ", 1)[0] + " …"
    full = html.escape(text, quote=True)
    return f"<td class='meta wrap' title='{full}'>{html.escape(cut)}</td>"


def _ood_note(results: dict[str, Any]) -> str:
    """One sentence naming the graph prompts outside the training distribution ("" if none)."""
    items = [
        f"{stage} {where}: {why}"
        for stage in ("graphs", "plt")
        for where, why in ((results.get(stage) or {}).get("out_of_distribution") or {}).items()
    ]
    return "Graph prompts outside the training distribution: " + "; ".join(items) if items else ""


def _toc(entries: list[tuple[str, str]]) -> str:
    items = "".join(f"<li><a href='#{a}'>{html.escape(t)}</a></li>" for a, t in entries)
    return f"<nav id='toc'><b>Contents</b><ol>{items}</ol></nav>"


def _section(ctx: RunContext, stage: str, globs: list[str], tables: list[str]) -> str:
    """A stage's figures, tables and (graphs, features) explorers; says why when it has none."""
    folder = ctx.run_dir / stage
    parts = [_summary_table(ctx.results.get(stage) or _scalars(folder / f"{stage}.json"))]
    if stage == "graphs":
        parts.append(graph_html(folder, ctx.run_dir / "features", ctx.run_dir))
    figures = [figure_html(p, ctx.run_dir) for p in _images(folder, globs)]
    parts.append(f"<div class='figs'>{''.join(figures)}</div>" if figures else "")
    n = 0
    for g in tables:
        for p in sorted(folder.glob(g))[:4]:
            n += 1
            parts.append(csv_table(p, ctx.run_dir, "tbl-" + p.stem.replace("_", "-")))
    if stage == "features":
        parts.append(features_html(folder))
    if not figures and not n:
        parts.append(
            f"<p class='why'>No figure or table: the {stage} stage wrote none into {stage}/ "
            "(its numbers are above and in metrics.json).</p>"
        )
    return "".join(parts)


def _headline_html(ctx: RunContext, headline: dict[str, Any], intervals: dict[str, Any]) -> str:
    sanity = check_task(headline)
    notes = metric_notes(ctx.results)  # undefined path-level numbers, out-of-distribution prompts
    shown = displayed(with_undefined(headline, notes), sanity)
    model = ctx.cfg.model.name
    words = task_words_or_default(ctx.cfg)  # the run's task: labels, published figures or not
    body = "".join(
        f"<tr><td><a href='#def-{methods_anchor(m)}'>"
        f"{html.escape(words.metric_label(metric_name(m)))}</a>"
        f"<br><span class='key'>{m}</span></td>"
        f"<td class='num'>{html.escape(v)}<br><span class='meta'>"
        f"{html.escape(_ci_cell(m, shown[m], intervals.get(m)))}</span></td>"
        + _text_cell(task_context(m, context_phrase(m, shown[m], model), words))
        + _text_cell(beside(m, headline, intervals, notes))
        + "</tr>"
        for m, v, _, _ in headline_rows(shown)
    )
    return (
        "<div class='scroll'><table class='headline'><thead><tr><th>metric</th><th>measured"
        "<br><span class='meta'>95 % CI, bootstrap over prompts</span></th>"
        "<th class='wrap'>context</th><th class='wrap'>beside it</th></tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def render_html(
    ctx: RunContext,
    headline: dict[str, Any],
    meta: dict[str, Any],
    intervals: dict[str, list[float]],
) -> str:
    cfg = ctx.cfg
    sanity = check_task(headline)
    notes = metric_notes(ctx.results)
    words = task_words_or_default(cfg)
    rows = task_rows(headline_rows(displayed(with_undefined(headline, notes), sanity)), words)
    ood = _ood_note(ctx.results)
    sections = [section for section in SECTIONS if _has_section(ctx, section[0])]
    present = [(stage, words.fill(title)) for stage, title, *_ in sections]
    defined: dict[str, list[str]] = {}  # each definition once, in order, with its metrics
    for m, *_ in rows:
        defined.setdefault(methods_anchor(m), []).append(m)
    defs = "".join(
        f"<dt id='def-{a}'>{html.escape(', '.join(ms))}</dt>"
        f"<dd>{words.metric_label(definition_html(a))}</dd>"
        for a, ms in defined.items()
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(cfg.report.title)}</title><style>{_asset('report.css')}</style>"
        "</head><body>",
        f"<h1>{html.escape(cfg.report.title)}</h1>",
        banner_html(sanity),
        f"<p class='meta'>model <b>{html.escape(cfg.model.name)}</b> · preset "
        f"<b>{html.escape(cfg.preset)}</b> · seed {cfg.seed} · git "
        f"{html.escape(str(meta.get('git_commit')))} · torch "
        f"{html.escape(meta['versions'].get('torch', '?'))} · transformer-lens "
        f"{html.escape(meta['versions'].get('transformer-lens', '?'))}</p>",
        f"<p class='meta' id='task'>{html.escape(words.header())}</p>",
        f"<p class='note'>{html.escape(context_note(cfg.model.name))}</p>",
        f"<p class='note' id='ood'>{html.escape(ood)}</p>" if ood else "",
        _toc(
            [("headline", "Headline")]
            + [(f"sec-{st}", t) for st, t in present]
            + ([("definitions", "Definitions")] if defs else [])
        ),
        "<section id='sec-headline'><h2 id='headline'>Headline</h2>",
        _headline_html(ctx, headline, intervals),
        "</section>",
    ]
    for stage, title, globs, tables, intro in sections:
        parts.append(
            f"<section id='sec-{stage}'><h2>{html.escape(words.fill(title))}</h2>"
            f"<p class='intro'>{html.escape(words.fill(intro))}</p>"
            f"{_section(ctx, stage, globs, tables)}</section>"
        )
    if defs:
        parts.append(
            "<section id='sec-definitions'><h2 id='definitions'>Definitions</h2><p class='meta'>"
            "From docs/methods.md (formula, source paper and where clt-bench differs, per "
            f"metric).</p><dl>{defs}</dl></section>"
        )
    parts.append(f"<script>{_asset('report.js')}</script></body></html>")
    return "\n".join(parts)


def render_summary_md(
    ctx: RunContext, headline: dict[str, Any], intervals: dict[str, list[float]]
) -> str:
    sanity = check_task(headline)
    notes = metric_notes(ctx.results)
    ood = _ood_note(ctx.results)
    model = ctx.cfg.model.name
    words = task_words_or_default(ctx.cfg)
    lines = [
        f"# {ctx.cfg.report.title}",
        "",
        f"model `{model}`, preset `{ctx.cfg.preset}`, seed {ctx.cfg.seed}",
        "",
        words.header(),
        "",
        *([] if sanity.ok else [f"**Warning: {sanity.message}**", ""]),
        context_note(model),
        "",
        *([ood, ""] if ood else []),
        f"| metric | measured | 95 % CI (prompts) | {context_header(model)} | source | beside it |",
        "|---|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {m} | {v} | {_ci(intervals.get(m))} | {p} | {s} "
        f"| {beside(m, headline, intervals, notes)} |"
        for m, v, p, s in task_rows(
            headline_rows(displayed(with_undefined(headline, notes), sanity)), words
        )
    ]
    lines += [
        "",
        "All headline numbers: `metrics.json`; the page: `report.html`; definitions: "
        "`docs/methods.md` (one anchor per metric, e.g. `#task-prob_diff`).",
        "",
    ]
    return "\n".join(lines)


OUTPUTS = ("metrics.json", "summary.md", "report.html")


def stage_records(ctx: RunContext) -> dict[str, str]:
    """stage -> the ``config_hash`` of its ``stage.json`` for every finished stage the report
    reads, and the report's own hash (its ``stage.json`` is written once the report is done)."""
    records = {}
    for stage in ctx.results:
        record = load_stage_record(ctx.run_dir, stage) if stage != "report" else None
        if record is not None:
            records[stage] = str(record.get("config_hash"))
    records["report"] = ctx.hashes["report"]  # the runner's, computed as the report started
    return records


def write_report(ctx: RunContext) -> dict[str, Any]:
    """Write report.html, summary.md and metrics.json into ``ctx.run_dir``; returns the headline.

    The outputs of an earlier report are removed first and ``metrics.json`` (what
    ``clt-bench check`` reads) is written last, so a report killed half-way never leaves new
    numbers beside an old page; ``metrics.json`` records the hash of every stage it was made from
    (``stages``), which the gate compares with the stages' own records (``report.check``).
    """
    for name in OUTPUTS:
        (ctx.run_dir / name).unlink(missing_ok=True)
    headline = headline_metrics(ctx.results)
    meta = run_metadata(
        config=ctx.cfg,
        seeds={
            "run": ctx.cfg.seed,
            "clt": ctx.cfg.clt.seed,
            "activations": ctx.cfg.activations.seed,
        },
    )
    intervals = headline_intervals(ctx.run_dir, headline, seed=ctx.cfg.seed)
    intervals.update(stage_intervals(ctx.results))  # units needed, top-k set ratios
    metrics = {
        **meta,
        "model": ctx.cfg.model.name,
        "preset": ctx.cfg.preset,
        "headline": headline,
        "headline_ci": intervals,
        "headline_ci_method": f"95 % percentile bootstrap over prompts, 2000 resamples, seed "
        f"{ctx.cfg.seed}",
        "stages": stage_records(ctx),
        "sanity": sanity_json(check_task(headline)),  # does the model do the task at all
        "task": asdict(task_words_or_default(ctx.cfg)),  # which task and template ran
    }
    summary_md = render_summary_md(ctx, headline, intervals)
    page = render_html(ctx, headline, meta, intervals)
    write_text(ctx.run_dir / "summary.md", summary_md)
    write_text(ctx.run_dir / "report.html", page)
    write_json(ctx.run_dir / "metrics.json", metrics)  # last: the gate's input
    (ctx.run_dir / "report").mkdir(exist_ok=True)
    return {"headline": headline, "report": str(ctx.run_dir / "report.html")}
