"""``clt-bench compare-runs``: any finished runs side by side, with bootstrap intervals.

Each run contributes its flat headline (``metrics.json``, or the ``<stage>/stage.json``
summaries of a run without the report stage). A mean over task prompts gets a seeded percentile
bootstrap 95 % interval from the per-prompt values its stage stores (``PER_PROMPT``), and, where
two runs scored the same prompts (same model and task config), a paired interval of the
difference to the first run; other metrics are single values (their spread is over transcoder
seeds, which one run cannot give). ``--out`` writes a page or markdown and a forest plot.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clt_bench.errors import UserError
from clt_bench.io import markdown_table, read_json, write_text
from clt_bench.report.headline import HEADLINE_ORDER, fmt3g, headline_metrics
from clt_bench.stats import bootstrap_ci

# headline metric -> (per-prompt file inside the run, tensor name); the mean of that tensor is the
# headline value
PER_PROMPT: dict[str, tuple[str, str]] = {
    "task.prob_diff": ("task/per_prompt.safetensors", "prob_diff"),
    "task.cutoff_sharpness": ("task/per_prompt.safetensors", "cutoff_sharpness"),
    "task.corrupted_prob_diff": ("task/per_prompt.safetensors", "corrupted_prob_diff"),
    "task.logit_diff": ("task/per_prompt.safetensors", "logit_diff"),
    "clt.replacement_prob_diff": ("clt/per_prompt.safetensors", "replacement_prob_diff"),
    "plt.replacement_prob_diff": ("plt/clt/per_prompt.safetensors", "replacement_prob_diff"),
    **{
        f"baseline.{k}": ("baseline/per_prompt.safetensors", k)
        for k in (
            "model_prob_diff",
            "corrupted_prob_diff",
            "circuit_prob_diff",
            "circuit_paths_prob_diff",
            "necessity_prob_diff",
        )
    },
    # the influence shares by position over the task prompts (graphs stage; the PLT sub-run's)
    **{
        f"{stage}.influence_share_{key}_task_prompts": (f"{folder}/per_prompt.safetensors", key)
        for stage, folder in (("graphs", "graphs"), ("plt", "plt/graphs"))
        for key in ("yy", "end", "rest", "planted_sites")
    },
    # the held-out PDs of the compare stage
    **{
        f"compare.{k}": ("compare/per_prompt.safetensors", k)
        for k in ("model_prob_diff", "replacement_prob_diff", "plt_replacement_prob_diff")
    },
    # where each unit kind acts, on a model with a planted circuit (compare.effect_shares)
    **{
        f"compare.effect_share_{key}_{kind}": (
            "compare/per_prompt.safetensors",
            f"effect_share_{key}_{kind}",
        )
        for key in ("yy", "end", "rest", "planted_sites")
        for kind in ("clt", "plt", "neuron")
    },
}
# config sections that fix which prompts a per-prompt file holds (paired comparison needs equal)
PROMPT_SECTIONS = ("model", "task")
# run-description keys that are not measurements
SKIP_SUFFIXES = ("seconds", "tokens_per_second")


@dataclass
class RunMetrics:
    name: str
    path: Path
    headline: dict[str, float]
    per_prompt: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    prompt_key: Any = None  # the config sections that fix the prompts (None: unknown)


def _stage_summaries(run: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for marker in sorted(run.glob("*/stage.json")):
        data = read_json(marker)
        if isinstance(data, dict) and isinstance(data.get("summary"), dict):
            out[marker.parent.name] = data["summary"]
    return out


def per_prompt_values(
    run: Path, headline: dict[str, float]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The stored per-prompt values behind ``headline``'s prompt means, and notes on stale files.

    Values are returned only when they average to the headline value (honest intervals only).
    """
    from clt_bench.io import load_tensors

    values: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for metric, (rel, key) in PER_PROMPT.items():
        f = Path(run) / rel
        if metric not in headline or not f.is_file():
            continue
        tensors = load_tensors(f)
        if key not in tensors:
            continue
        vals = tensors[key].double().numpy()
        if len(vals) == 0 or not math.isclose(
            float(vals.mean()), headline[metric], rel_tol=1e-6, abs_tol=1e-9
        ):
            notes.append(
                f"{metric}: per-prompt values in {rel} do not average to the "
                f"headline value (stale file?); no interval"
            )
            continue
        values[metric] = vals
    return values, notes


def load_run(path: str | Path) -> RunMetrics:
    """A finished run's headline and the per-prompt values behind its means."""
    run = Path(path)
    if run.is_file() and run.name == "metrics.json":
        run = run.parent
    if not run.is_dir():
        raise UserError(f"{run} is not a run directory.")
    metrics = run / "metrics.json"
    if metrics.is_file():
        head = read_json(metrics).get("headline")
        if not isinstance(head, dict):
            raise UserError(f"{metrics} has no headline table; is the run finished?")
    else:
        head = headline_metrics(_stage_summaries(run))
    headline = {
        k: float(v)
        for k, v in head.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and not k.endswith(SKIP_SUFFIXES)
    }
    if not headline:
        raise UserError(f"{run} holds no finished stage (no metrics.json or */stage.json).")
    out = RunMetrics(name=run.name, path=run, headline=headline)
    cfg_path = run / "config.json"
    if cfg_path.is_file():
        cfg = read_json(cfg_path)
        out.prompt_key = [cfg.get(s) for s in PROMPT_SECTIONS]
    out.per_prompt, out.notes = per_prompt_values(run, headline)
    return out


@dataclass(frozen=True)
class Cell:
    value: float | None
    ci: tuple[float, float] | None = None

    @property
    def interval(self) -> str:
        return f"[{fmt3g(self.ci[0])}, {fmt3g(self.ci[1])}]" if self.ci else ""

    def text(self) -> str:
        if self.value is None:
            return "–"
        return f"{fmt3g(self.value)} {self.interval}" if self.ci else fmt3g(self.value)


@dataclass
class Comparison:
    runs: list[RunMetrics]
    metrics: list[str]
    cells: dict[str, list[Cell]]  # metric -> one cell per run
    deltas: dict[str, list[Cell | None]]  # metric -> per run after the first: paired B - A
    n_boot: int
    seed: int

    @property
    def with_intervals(self) -> list[str]:
        return [m for m in self.metrics if any(c.ci for c in self.cells[m])]

    @property
    def paired(self) -> list[str]:
        """The metrics with a paired difference to the first run for at least one run."""
        return [m for m in self.metrics if any(d is not None for d in self.deltas[m])]


def compare_runs(
    paths: list[str | Path], n_boot: int = 2000, seed: int = 0, metrics: list[str] | None = None
) -> Comparison:
    """Headline metrics of ``paths`` side by side (see the module docstring)."""
    if not paths:
        raise UserError("compare-runs needs at least one run directory.")
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder name in different places: use the paths
        for r in runs:
            r.name = str(r.path)
    union = set().union(*(r.headline for r in runs))
    if metrics:
        unknown = [m for m in metrics if m not in union]
        if unknown:
            raise UserError(f"no run has the metric '{unknown[0]}'.")
        order = list(metrics)
    else:
        order = [m for m in HEADLINE_ORDER if m in union] + sorted(union - set(HEADLINE_ORDER))
    cells: dict[str, list[Cell]] = {}
    deltas: dict[str, list[Cell | None]] = {}
    for m in order:
        row = []
        for r in runs:
            v = r.headline.get(m)
            ci = bootstrap_ci(r.per_prompt[m], n_boot, seed) if m in r.per_prompt else None
            row.append(Cell(v, ci))
        cells[m] = row
        base = runs[0]
        drow: list[Cell | None] = []
        for r in runs[1:]:
            a, b = base.per_prompt.get(m), r.per_prompt.get(m)
            same_prompts = base.prompt_key is not None and base.prompt_key == r.prompt_key
            if a is not None and b is not None and len(a) == len(b) and same_prompts:
                d = b - a
                drow.append(Cell(float(d.mean()), bootstrap_ci(d, n_boot, seed)))
            else:
                drow.append(None)
        deltas[m] = drow
    return Comparison(runs, order, cells, deltas, n_boot, seed)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return markdown_table(header, ([c.replace("|", "\\|") for c in row] for row in rows))


def _notes(cmp: Comparison) -> list[str]:
    ci = cmp.with_intervals
    notes = [
        f"[lo, hi]: percentile bootstrap 95 % interval over prompts ({cmp.n_boot} resamples, "
        f"seed {cmp.seed}); only for metrics that are a mean over task prompts with stored "
        f"per-prompt values: {', '.join(ci) if ci else 'none in these runs'}.",
        "All other metrics (reconstruction, sparsity, graph scores, counts) are single values: "
        "their uncertainty is the spread over transcoder seeds, which needs several runs.",
    ]
    for r in cmp.runs:
        notes += [f"{r.name}: {n}" for n in r.notes]
    return notes


def format_markdown(cmp: Comparison) -> str:
    header = ["metric", *[r.name for r in cmp.runs]]
    rows = [[m, *[c.text() for c in cmp.cells[m]]] for m in cmp.metrics]
    parts = [
        "# clt-bench: runs compared",
        "",
        "runs: " + ", ".join(f"`{r.name}` ({r.path})" for r in cmp.runs),
        "",
        _md_table(header, rows),
    ]
    if cmp.paired:
        dh = ["metric", *[f"{r.name} − {cmp.runs[0].name}" for r in cmp.runs[1:]]]
        drows = [
            [m, *[d.text() if d else "– (prompts differ)" for d in cmp.deltas[m]]]
            for m in cmp.paired
        ]
        parts += [
            "",
            "## Paired differences (same prompts; bootstrap over prompts)",
            "",
            _md_table(dh, drows),
        ]
    parts += ["", *[f"- {n}" for n in _notes(cmp)]]
    return "\n".join(parts) + "\n"


def forest_plot(cmp: Comparison, path: str | Path) -> Path | None:
    """The paired differences to the first run with their 95 % intervals, one panel per metric
    (each on its own scale), a line at 0; PNG and SVG. ``None`` when no metric was paired."""
    import matplotlib.pyplot as plt

    from clt_bench.plots import save_figure
    from clt_bench.report.headline import metric_name

    paired = cmp.paired
    if not paired:
        return None
    n_rows = len(cmp.runs) - 1
    fig, axes = plt.subplots(
        len(paired), 1, figsize=(7.0, 0.9 + (0.45 * n_rows + 0.75) * len(paired)), squeeze=False
    )
    labels = [r.name for r in cmp.runs[1:]]
    ys = [-i for i in range(n_rows)]
    for ax, m in zip(axes[:, 0], paired, strict=True):
        for i, d in enumerate(cmp.deltas[m]):
            if d is None or d.value is None:
                ax.text(0, -i, "prompts differ: not paired", va="center", ha="center", fontsize=9)
                continue
            lo, hi = d.ci if d.ci else (d.value, d.value)
            ax.errorbar(
                [d.value],
                [-i],
                xerr=[[d.value - lo], [hi - d.value]],
                fmt="o",
                color="#1f77b4",
                capsize=4,
            )
        ax.axvline(0, color="0.5", lw=0.8, ls="--")
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=9)
        ax.set_ylim(min(ys) - 0.6, 0.6)
        ax.set_title(f"{metric_name(m)} ({m})", fontsize=10, loc="left")
        ax.tick_params(axis="x", labelsize=9)
    axes[-1, 0].set_xlabel(f"run − {cmp.runs[0].name} (paired, 95 % bootstrap interval)")
    fig.tight_layout()
    return save_figure(fig, path)


def _html_cell(cell: Cell | None, missing: str = "–") -> str:
    if cell is None or cell.value is None:
        return f"<td class='meta'>{html.escape(missing)}</td>"
    ci = f"<br><span class='meta'>{cell.interval}</span>" if cell.ci else ""
    return f"<td class='num' data-v='{cell.value!r}'>{fmt3g(cell.value)}{ci}</td>"


def _html_table(table_id: str, header: list[str], rows: list[tuple[str, list[str]]]) -> str:
    from clt_bench.report.headline import metric_name

    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr><td>{html.escape(metric_name(m))}<br><span class='key'>{html.escape(m)}</span></td>"
        + "".join(cells)
        + "</tr>"
        for m, cells in rows
    )
    return (
        f"<div class='tools'><input type='search' class='filter' data-for='{table_id}' "
        "placeholder='filter metrics' aria-label='filter metrics'></div>"
        f"<div class='scroll tbl'><table class='data' id='{table_id}'><thead><tr>{th}</tr>"
        f"</thead><tbody>{body}</tbody></table></div>"
    )


def format_html(cmp: Comparison, figure: Path | None = None) -> str:
    from clt_bench.report.assets import read as asset
    from clt_bench.report.figure_html import figure_html

    header = ["metric", *[r.name for r in cmp.runs]]
    rows = [(m, [_html_cell(c) for c in cmp.cells[m]]) for m in cmp.metrics]
    paired = cmp.paired
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>clt-bench: runs compared</title><style>{asset('report.css')}</style></head>"
        "<body><h1>clt-bench: runs compared</h1>",
        "<p class='meta'>runs: "
        + ", ".join(f"<b>{html.escape(r.name)}</b> ({html.escape(str(r.path))})" for r in cmp.runs)
        + "</p>",
        "<section id='sec-table'><h2>Metrics</h2><p class='meta'>Value, and under it the 95 % "
        "bootstrap interval over prompts where the metric is a mean over prompts. Click a "
        "header to sort.</p>",
        _html_table("tbl-runs", header, rows),
        "</section>",
    ]
    if paired:
        dh = ["metric", *[f"{r.name} − {cmp.runs[0].name}" for r in cmp.runs[1:]]]
        drows = [(m, [_html_cell(d, "– (prompts differ)") for d in cmp.deltas[m]]) for m in paired]
        parts += [
            "<section id='sec-paired'><h2>Paired differences (same prompts; bootstrap over "
            "prompts)</h2>",
            figure_html(figure, figure.parent) if figure is not None else "",
            _html_table("tbl-paired", dh, drows),
            "</section>",
        ]
    else:
        parts.append(
            "<section id='sec-paired'><h2>Paired differences</h2><p class='why'>No paired "
            "difference: no metric with per-prompt values was measured on the same prompts "
            "(same model and task config) in two of these runs.</p></section>"
        )
    parts += [
        "<section id='sec-notes'><h2>Notes</h2><ul>",
        *[f"<li>{html.escape(n)}</li>" for n in _notes(cmp)],
        f"</ul></section><script>{asset('report.js')}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(cmp: Comparison, out: str | Path) -> Path:
    """``out`` ending in .html gets the HTML page, anything else the markdown; the forest plot of
    the paired differences goes beside it (``<out stem>_forest.png`` and ``.svg``)."""
    out = Path(out)
    figure = forest_plot(cmp, out.with_name(f"{out.stem}_forest.png"))
    if out.suffix.lower() in (".html", ".htm"):
        return write_text(out, format_html(cmp, figure))
    text = format_markdown(cmp)
    if figure is not None:
        text += f"\n![paired differences]({figure.name})\n"
    return write_text(out, text)
