"""The report stage: one self-contained HTML page, ``summary.md`` and ``metrics.json``.

``metrics.json`` holds the schema version, config, package versions, git commit, seeds and the
flat ``headline`` dict (``"stage.metric": value``) that ``clt-bench check`` compares with the
reference.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from clt_bench.io import read_json, run_metadata, write_json, write_text
from clt_bench.report.headline import (
    PUBLISHED,
    beside,
    context_header,
    context_note,
    headline_metrics,
    headline_rows,
    metric_notes,
    stage_intervals,
    with_undefined,
)
from clt_bench.report.links import definition_html, methods_anchor
from clt_bench.report.sanity import banner_html, check_task, displayed
from clt_bench.report.sanity import to_json as sanity_json
from clt_bench.report.task_words import task_rows, task_words_or_default, words_json

if TYPE_CHECKING:  # the pipeline imports the stages lazily; no import cycle at run time
    from clt_bench.pipeline import RunContext

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
        ["transcoders.csv", "overlap.csv", "families.csv", "feature_generalisation.csv"],
        "How much of the features' influence lies inside the circuit's components, node overlap, "
        "and how many units (features vs neurons) recover the probability difference.",
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
MAX_ROWS = 40


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
        f"<figcaption>{html.escape(path.name)}</figcaption></figure>"
    )


def _images(folder: Path, globs: list[str]) -> list[Path]:
    seen: list[Path] = []
    for g in globs:
        for p in sorted(folder.glob(g)):
            if p not in seen:
                seen.append(p)
    return seen[:MAX_IMAGES]


def _csv_table(path: Path) -> str:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return ""
    note = f" (first {MAX_ROWS} of {len(df)} rows)" if len(df) > MAX_ROWS else ""
    table = df.head(MAX_ROWS).to_html(
        index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="data"
    )
    return f"<h4>{html.escape(path.name)}{note}</h4><div class='scroll'>{table}</div>"


def _summary_table(summary: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in summary.items()
    )
    return f"<table class='kv'>{rows}</table>" if rows else ""


def _scalars(path: Path) -> dict[str, Any]:
    """The top-level scalars of a stage's own JSON (for sections that are not pipeline stages)."""
    if not path.is_file():
        return {}
    data = read_json(path)
    return {k: v for k, v in data.items() if isinstance(v, int | float | str)}


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
td,th{border-bottom:1px solid #e4e4e4;padding:.25em .7em;text-align:right}
td:first-child,th:first-child{text-align:left}
table.headline th{background:#f3f3f3}
table.headline td:nth-child(n+2):nth-child(-n+4){white-space:nowrap}
figure{display:inline-block;margin:.4em;vertical-align:top;max-width:100%}
figure img{max-width:min(520px,100%);width:100%;border:1px solid #eee}
img{max-width:100%;height:auto} td,th{overflow-wrap:anywhere}
nav#toc{background:#f7f7f7;padding:.4em 1.2em;border-radius:4px;font-size:.9em}
nav#toc ol{margin:.2em 0;padding-left:1.4em;columns:2}
figcaption{font-size:.75em;color:#777;text-align:center}
.scroll{overflow-x:auto} .meta{color:#666;font-size:.85em} .note{background:#fffbe6;
padding:.6em 1em;border-left:4px solid #f0c000;font-size:.9em}
"""


def headline_intervals(
    run_dir: Path, headline: dict[str, Any], seed: int = 0, n_boot: int = 2000
) -> dict[str, list[float]]:
    """95 % percentile bootstrap intervals over prompts (seeded) for the headline metrics that are
    means over prompts and whose per-prompt values the stages stored."""
    from clt_bench.report.compare_runs import bootstrap_ci, per_prompt_values

    numbers = {k: float(v) for k, v in headline.items() if isinstance(v, int | float)}
    values, _ = per_prompt_values(run_dir, numbers)
    return {m: list(bootstrap_ci(v, n_boot=n_boot, seed=seed)) for m, v in values.items()}


def _ci(interval: list[float] | None) -> str:
    if not interval:
        return ""
    lo, hi = ("never" if v is None or v == float("inf") else f"{v:.4g}" for v in interval)
    return f"[{lo}, {hi}]"


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


def render_html(
    ctx: RunContext,
    headline: dict[str, Any],
    meta: dict[str, Any],
    intervals: dict[str, list[float]] | None = None,
) -> str:
    cfg = ctx.cfg
    intervals = intervals or {}
    sanity = check_task(headline)
    notes = metric_notes(ctx.results)  # undefined path-level numbers, out-of-distribution prompts
    words = task_words_or_default(cfg)
    rows = task_rows(headline_rows(displayed(with_undefined(headline, notes), sanity)), words)
    head = "".join(
        f"<tr><td><a href='#def-{methods_anchor(m)}'>"
        f"{html.escape(words.metric_label(PUBLISHED.get(m, (m,))[0]))}</a>"
        f"<br><span class='meta'>{m}</span></td>"
        f"<td>{v}</td><td class='meta'>{_ci(intervals.get(m))}</td><td>{p}</td>"
        f"<td class='meta'>{html.escape(s)}</td>"
        f"<td class='meta'>{html.escape(beside(m, headline, intervals, notes))}</td></tr>"
        for m, v, p, s in rows
    )
    ood = _ood_note(ctx.results)
    present = [
        (stage, words.fill(title))
        for stage, title, *_ in SECTIONS
        if (ctx.run_dir / stage).is_dir()
    ]
    defined: dict[str, list[str]] = {}  # each definition once, in order, with its metrics
    for m, *_ in rows:
        defined.setdefault(methods_anchor(m), []).append(m)
    defs = "".join(
        f"<dt id='def-{a}'>{html.escape(', '.join(ms))}</dt>"
        f"<dd>{words.metric_label(definition_html(a))}</dd>"
        for a, ms in defined.items()
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(cfg.report.title)}"
        f"</title><style>{CSS}</style></head><body>",
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
        "<h2 id='headline'>Headline</h2><div class='scroll'><table class='headline'><tr>"
        "<th>metric</th><th>measured</th><th>95 % CI (bootstrap over prompts)</th>"
        f"<th>{html.escape(context_header(cfg.model.name))}</th><th>source</th>"
        f"<th>beside it</th></tr>{head}</table></div>",
    ]
    for stage, title, globs, tables, intro in SECTIONS:
        folder = ctx.run_dir / stage
        if not folder.is_dir():
            continue
        parts.append(
            f"<h2 id='sec-{stage}'>{html.escape(words.fill(title))}</h2>"
            f"<p>{html.escape(words.fill(intro))}</p>"
        )
        parts.append(_summary_table(ctx.results.get(stage) or _scalars(folder / f"{stage}.json")))
        parts.extend(_img(p) for p in _images(folder, globs))
        for g in tables:
            parts.extend(_csv_table(p) for p in sorted(folder.glob(g))[:4])
    if defs:
        parts.append(
            "<h2 id='definitions'>Definitions</h2><p class='meta'>From docs/methods.md (formula, "
            f"source paper and where clt-bench differs, per metric).</p><dl>{defs}</dl>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_summary_md(
    ctx: RunContext, headline: dict[str, Any], intervals: dict[str, list[float]] | None = None
) -> str:
    intervals = intervals or {}
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
    from clt_bench.pipeline import stage_hash

    records = {}
    for stage in ctx.results:
        marker = Path(ctx.run_dir) / stage / "stage.json"
        if stage != "report" and marker.is_file():
            records[stage] = str(read_json(marker).get("config_hash"))
    records["report"] = stage_hash(ctx.cfg, "report")
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
        "task": words_json(task_words_or_default(ctx.cfg)),  # which task and template ran
    }
    summary_md = render_summary_md(ctx, headline, intervals)
    page = render_html(ctx, headline, meta, intervals)
    write_text(ctx.run_dir / "summary.md", summary_md)
    write_text(ctx.run_dir / "report.html", page)
    write_json(ctx.run_dir / "metrics.json", metrics)  # last: the gate's input
    (ctx.run_dir / "report").mkdir(exist_ok=True)
    return {"headline": headline, "report": str(ctx.run_dir / "report.html")}
