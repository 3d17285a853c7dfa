"""The feature table (one row per selected feature, one column per metric) as CSV and Markdown,
and the heatmap figures (one PNG per feature for the top ones, plus a grid)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from clt_bench.io import csv_text, markdown_table, write_text
from clt_bench.plots import (
    YY_ZZ_AXES,
    Answers,
    caption_below,
    mark_caption,
    save_figure,
    yy_zz_heatmap,
)

# (column, Markdown header, format) -- the Markdown table shows these; the CSV has every column
MD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("rank", "#", "d"),
    ("feature", "feature", "s"),
    ("label", "label", "s"),
    ("secondary_label", "2nd label", "s"),
    ("runner_up", "runner-up", "s"),
    ("runner_up_score", "runner-up r", "+.2f"),
    ("influence", "influence", ".3g"),
    ("position", "pos", "s"),
    ("layers_written", "writes", "s"),
    ("gt_corr", "gt", "+.2f"),
    ("large_zz_corr", "large ZZ", "+.2f"),
    ("parity_corr", "parity", ".2f"),
    ("mult5_corr", "x5", "+.2f"),
    ("zz_range", "ZZ range", "s"),
    ("yy_fraction", "YY frac", ".2f"),
    ("yy_range", "YY range", "s"),
    ("pd_contribution", "PD contrib", "+.4f"),
    ("delta_pd_constrained", "dPD constr", "+.4f"),
    ("delta_pd_free", "dPD free", "+.4f"),
    ("circuit_mlp_share", "in circuit MLPs", ".2f"),
    ("via", "via", "s"),
    ("contexts", "top context", "s"),
)


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt == "s":
        return str(value)
    return format(value, fmt)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    cols = list(rows[0]) if rows else [c for c, _, _ in MD_COLUMNS]
    return write_text(path, csv_text(rows, cols))


def feature_markdown(rows: Sequence[dict[str, Any]], max_context: int = 60) -> str:
    lines = []
    for r in rows:
        cells = []
        for col, _, fmt in MD_COLUMNS:
            v = r.get(col)
            if col == "contexts":
                v = str(v or "").split(" || ")[0][:max_context]
            cells.append(_fmt(v, fmt).replace("|", "/"))
        lines.append(cells)
    return markdown_table([h for _, h, _ in MD_COLUMNS], lines) + "\n"


def heatmap_pngs(
    heatmaps: np.ndarray,
    rows: Sequence[dict[str, Any]],
    out_dir: Path,
    n_plots: int,
    yy_values: list[int],
    axes: tuple[str, str] = YY_ZZ_AXES,
    answers: Answers | None = None,
) -> list[str]:
    """One PNG per feature for the first ``n_plots`` rows (``axes``: the task's axis names;
    ``answers``: an exact task's answer per row, ``yy_zz_heatmap``); returns the file names."""
    names = []
    for i, r in enumerate(rows[:n_plots]):
        name = f"heatmap_{i + 1:03d}_L{r['layer']}_F{r['feature_id']}.png"
        yy_zz_heatmap(
            np.nan_to_num(heatmaps[i]),
            out_dir / name,
            f"#{i + 1} {r['feature']} ({r['label']}), gt {r['gt_corr']:+.2f}",
            cbar_label="attributed effect on logit ZZ",
            diverging=True,
            yy_values=yy_values,
            axes=axes,
            answers=answers,
        )
        names.append(name)
    return names


def heatmap_grid(
    heatmaps: np.ndarray,
    rows: Sequence[dict[str, Any]],
    path: Path,
    n: int,
    yy_values: list[int],
    answers: Answers | None = None,
    cols: int = 4,
) -> Path | None:
    """A grid of the first ``n`` features' heatmaps (each with its own diverging colour scale;
    ``answers``: an exact task's answer per row, ``yy_zz_heatmap``)."""
    n = min(n, len(rows))
    if n == 0:
        return None
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.axis("off")
            continue
        r = rows[i]
        yy_zz_heatmap(
            np.nan_to_num(heatmaps[i]),
            path,
            f"#{i + 1} {r['feature']} {r['label']}",
            cbar_label="",
            diverging=True,
            ax=ax,
            yy_values=yy_values,
            answers=answers,
        )
        ax.set_xlabel("")
        ax.set_ylabel("")
    fig.suptitle("YY x ZZ logit attribution of the top features (rows YY, columns ZZ)")
    fig.tight_layout()
    caption_below(fig, mark_caption(answers))
    return save_figure(fig, path)
