"""Shared plotting helpers (seaborn/matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.text

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402, F401  (re-exported: baseline.figures)

from clt_bench.io import atomic_path  # noqa: E402

MIN_TEXT_CHUNK = "clt-bench:min-text-pt"  # PNG text chunk: the figure's smallest font (points)


def min_text_pt(fig: plt.Figure) -> float | None:
    """The smallest font size (points) of the figure's visible, non-empty text: tick labels,
    titles, legends, colour-bar labels; ``None`` for a figure without text."""
    sizes = [
        float(t.get_fontsize())
        for t in fig.findobj(matplotlib.text.Text)
        if t.get_visible() and t.get_text().strip()
    ]
    return min(sizes) if sizes else None


def save_figure(fig: plt.Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Save ``fig`` at ``path``; a PNG also gets an SVG of the same figure beside it (for a
    paper) and the text chunk ``MIN_TEXT_CHUNK`` (what the report's readability check and its
    display width read: a PNG's DPI says how many pixels a point is)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    pt = min_text_pt(fig)
    meta = {MIN_TEXT_CHUNK: f"{pt:g}"} if fmt == "png" and pt is not None else None
    # the layout (a layout engine's too) and the tight box, once for both files: each savefig
    # with bbox_inches="tight" lays the figure out again before it renders it
    fig.set_dpi(dpi)
    fig.draw_without_rendering()
    bbox = fig.get_tightbbox().padded(plt.rcParams["savefig.pad_inches"])
    fig.set_layout_engine("none")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches=bbox, format=fmt, metadata=meta)
    if fmt == "png":
        # no date and fixed element ids: the same figure gives the same bytes (resume tests)
        svg_rc = matplotlib.rc_context({"svg.hashsalt": "clt-bench"})
        with atomic_path(path.with_suffix(".svg")) as tmp, svg_rc:
            fig.savefig(tmp, dpi=dpi, bbox_inches=bbox, format="svg", metadata={"Date": None})
    plt.close(fig)
    return path


# colour scales for probability heatmaps, and the words that say so in a caption
SCALE_CAPTIONS = {
    "linear": "",
    "row": "each YY row divided by its maximum",
    "log": "log10 scale, floored at 1e-4 of the largest value",
}


def scale_matrix(matrix: np.ndarray, scale: str = "linear") -> tuple[np.ndarray, str]:
    """Rescale a non-negative YY x ZZ matrix so that its structure is visible; (matrix, suffix).

    ``row``: each row divided by its own maximum (one dominant row no longer hides the others);
    ``log``: log10, floored at 1e-4 of the global maximum. The suffix names the scale for a label.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if scale == "linear":
        return m, ""
    if scale == "row":
        peak = np.nanmax(np.where(np.isnan(m), -np.inf, m), axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(peak > 0, m / np.where(peak > 0, peak, 1.0), 0.0)
        return np.where(np.isnan(m), np.nan, out), " / row max"
    if scale == "log":
        top = np.nanmax(m) if np.isfinite(np.nanmax(m)) else 1.0
        floor = max(float(top), 1e-30) * 1e-4
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log10(np.clip(m, floor, None)), " (log10)"
    raise ValueError(f"unknown scale {scale!r} (linear | row | log)")


def heatmap(
    ax: plt.Axes,
    matrix: np.ndarray,
    cmap: str = "viridis",
    center: float | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cbar_label: str | None = None,
) -> None:
    """A matrix as coloured cells, row 0 on top (what ``seaborn.heatmap`` draws, same colours).

    seaborn's heatmap renders the whole figure on every call to decide whether tick labels
    overlap, so a grid of n panels costs n full renders; the callers here set their own ticks, so
    the cells and the colour bar are drawn directly. NaN cells stay blank. ``center``: a
    diverging map centred there and cut to the data's range, as seaborn does.
    """
    data = np.ma.masked_invalid(np.asarray(matrix, dtype=np.float64))
    finite = data.compressed()
    lo = float(finite.min()) if vmin is None and finite.size else vmin
    hi = float(finite.max()) if vmax is None and finite.size else vmax
    cm = plt.get_cmap(cmap)
    if center is not None and lo is not None and hi is not None:
        vrange = max(hi - center, center - lo)
        cut = plt.Normalize(center - vrange, center + vrange)([lo, hi])
        cm = matplotlib.colors.ListedColormap(cm(np.linspace(cut[0], cut[1], 256)))
    mesh = ax.pcolormesh(data, cmap=cm, vmin=lo, vmax=hi, rasterized=True)  # SVG: one image
    ax.set(xlim=(0, data.shape[1]), ylim=(0, data.shape[0]))
    ax.invert_yaxis()
    for spine in ax.spines.values():
        spine.set_visible(False)
    if cbar_label is not None:
        cb = ax.figure.colorbar(mesh, ax=ax, label=cbar_label)
        cb.outline.set_linewidth(0)


# each heatmap row's correct answer ZZ (an exact task's; -1: none), in the order of its YY rows
Answers = Sequence[int] | np.ndarray

# the greater-than task's axis names (tasks/greater_than: [answers] question_label, label)
YY_ZZ_AXES = ("start year YY", "predicted end year ZZ")


def yy_zz_heatmap(
    matrix: np.ndarray,
    path: str | os.PathLike[str],
    title: str,
    cbar_label: str = "mean p(ZZ)",
    diverging: bool = False,
    ax: plt.Axes | None = None,
    yy_values: list[int] | None = None,
    scale: str = "linear",
    colorbar: bool = True,
    axes: tuple[str, str] = YY_ZZ_AXES,
    answers: Answers | None = None,
) -> Path | None:
    """Draw a [97, 100] YY x ZZ matrix (rows YY = 2..98) with each row's correct answer marked
    (``mark_answers``; a figure of its own says what the mark is under it); ``axes``: the (rows,
    columns) axis names, the task file's ``[answers]`` labels.

    ``scale`` (probability matrices only): linear | row | log, see ``scale_matrix``; the colour-bar
    label gets the scale's suffix and the caller states it in the title.
    """
    yy_values = yy_values or list(range(2, 2 + matrix.shape[0]))
    matrix, suffix = scale_matrix(matrix, "linear" if diverging else scale)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 5.6))
    vmin, vmax = (0.0, 1.0) if scale == "row" and not diverging else (None, None)
    heatmap(
        ax,
        matrix,
        cmap="RdBu_r" if diverging else "viridis",
        center=0.0 if diverging else None,
        vmin=vmin,
        vmax=vmax,
        cbar_label=cbar_label + suffix if colorbar else None,
    )
    n_answers = matrix.shape[1]  # the task's answer count (columns ZZ = 0..n-1)
    ax.set_xticks(np.arange(0, n_answers, 10) + 0.5)
    ax.set_xticklabels([f"{z:02d}" for z in range(0, n_answers, 10)])
    ticks = [i for i, y in enumerate(yy_values) if y % 10 == 0]
    ax.set_yticks(np.array(ticks) + 0.5)
    ax.set_yticklabels([f"{yy_values[i]:02d}" for i in ticks], rotation="vertical", va="center")
    mark_answers(ax, yy_values, n_answers, answers, "black" if diverging else "white")
    ax.set_ylabel(axes[0])
    ax.set_xlabel(axes[1])
    ax.set_title(title, fontsize=10)
    if own:
        caption_below(fig, mark_caption(answers))
        return save_figure(fig, path)
    return None


def mark_caption(answers: Answers | None) -> str:
    """What ``mark_answers`` draws, in words (for a caption)."""
    return "dashed line: ZZ = YY" if answers is None else "squares: the correct ZZ of each YY"


def mark_answers(
    ax: plt.Axes,
    yy_values: Sequence[int],
    n_answers: int,
    answers: Answers | None = None,
    color: str = "white",
) -> None:
    """Mark the cell (YY, ZZ = ``answers``' entry) of each row: an exact task's one correct answer
    per YY, as squares; ``None`` (gt / lt): the ZZ = YY diagonal, a dashed line (the boundary
    between right and wrong answers). A mark outside the ``n_answers`` columns (e.g. -1: no
    prompt has that YY) leaves its row bare. ``color``: one the colour map's cells do not take
    (white on viridis; black on a diverging map, whose zero is white)."""
    cols = list(yy_values) if answers is None else [int(z) for z in answers]
    if len(cols) != len(yy_values):
        raise ValueError(f"{len(cols)} answers for {len(yy_values)} heatmap rows")
    rows = [i for i, z in enumerate(cols) if 0 <= z < n_answers]
    cell = _cell_points(ax, len(yy_values), n_answers)
    style: dict[str, Any] = (
        {"ls": "--", "lw": 0.8}
        if answers is None
        else {
            "ls": "none",
            "marker": "s",
            "ms": 1.5 * cell,
            "mfc": "none",
            "mew": min(0.6, cell / 4),
        }
    )
    xs, ys = [cols[i] + 0.5 for i in rows], [i + 0.5 for i in rows]
    ax.plot(xs, ys, color=color, label=mark_caption(answers), **style)


def _cell_points(ax: plt.Axes, n_rows: int, n_cols: int) -> float:
    """The side (points) of one heatmap cell as the axes are placed now: a mark that size
    outlines its cell, in a figure of its own as in a small panel of a grid."""
    box = ax.get_position()
    width, height = ax.figure.get_size_inches()
    return 72.0 * min(box.width * width / max(n_cols, 1), box.height * height / max(n_rows, 1))


def caption_below(fig: plt.Figure, text: str) -> None:
    """``text`` centred under the figure (``save_figure``'s tight bounding box takes it in)."""
    fig.text(0.5, 0.0, text, ha="center", va="top", fontsize=10)


def yy_zz_grid(
    matrices: dict[str, np.ndarray],
    path: str | os.PathLike[str],
    title: str,
    scale: str = "row",
    ncols: int = 4,
    answers: Mapping[str, Answers | None] | None = None,
) -> Path:
    """Small multiples of [97, 100] YY x ZZ probability heatmaps (rows YY = 2..98; one panel per
    name; rows without prompts left out), one colour scale; ``answers``: each panel's correct
    answer per row (exact tasks; others: the ZZ = YY diagonal), what the caption under it says."""
    answers = answers or {}
    names = list(matrices)
    nrows = max(1, -(-len(names) // ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.3 * ncols, 3.1 * nrows), squeeze=False, layout="constrained"
    )
    for ax, name in zip(axes.flat, names, strict=False):
        m = np.asarray(matrices[name])
        rows = [i for i in range(m.shape[0]) if not np.isnan(m[i]).all()]  # YY rows with prompts
        ans = answers.get(name)
        yy_zz_heatmap(
            m[rows],
            path,
            name,
            ax=ax,
            scale=scale,
            colorbar=False,
            yy_values=[2 + i for i in rows],
            answers=None if ans is None else [ans[i] for i in rows],
        )
        ax.set_xlabel("ZZ", fontsize=8, labelpad=1)
        ax.set_ylabel("YY", fontsize=8, labelpad=1)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if scale == "row":  # every panel shares the 0..1 scale: one colour bar for all
        mappable = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0.0, 1.0))
        fig.colorbar(mappable, ax=axes, shrink=0.5, label="mean p(ZZ) / row max")
    caption = SCALE_CAPTIONS.get(scale, "")
    fig.suptitle(f"{title}" + (f" ({caption})" if caption else ""), fontsize=11)
    marks = dict.fromkeys(mark_caption(answers.get(name)) for name in names)
    caption_below(fig, "; ".join(marks))
    return save_figure(fig, path)
