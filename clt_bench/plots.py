"""Shared plotting helpers (seaborn/matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from clt_bench.io import atomic_path  # noqa: E402


def save_figure(fig: plt.Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(
            tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png"
        )
    plt.close(fig)
    return Path(path)


def yy_zz_heatmap(
    matrix: np.ndarray,
    path: str | os.PathLike[str],
    title: str,
    cbar_label: str = "mean p(ZZ)",
    diverging: bool = False,
    ax: plt.Axes | None = None,
    yy_values: list[int] | None = None,
) -> Path | None:
    """Draw a [97, 100] YY x ZZ matrix (rows YY = 2..98) with the ZZ = YY diagonal marked."""
    yy_values = yy_values or list(range(2, 2 + matrix.shape[0]))
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 5.6))
    kw = dict(cmap="RdBu_r", center=0.0) if diverging else dict(cmap="viridis")
    sns.heatmap(matrix, ax=ax, cbar_kws={"label": cbar_label}, xticklabels=10, yticklabels=10, **kw)
    ax.set_xticks(np.arange(0, 100, 10) + 0.5)
    ax.set_xticklabels([f"{z:02d}" for z in range(0, 100, 10)])
    ticks = [i for i, y in enumerate(yy_values) if y % 10 == 0]
    ax.set_yticks(np.array(ticks) + 0.5)
    ax.set_yticklabels([f"{yy_values[i]:02d}" for i in ticks])
    ax.plot(
        [y + 0.5 for y in yy_values],
        np.arange(len(yy_values)) + 0.5,
        color="white",
        lw=0.8,
        ls="--",
    )
    ax.set_xlabel("predicted end year ZZ")
    ax.set_ylabel("start year YY")
    ax.set_title(title, fontsize=10)
    if own:
        return save_figure(fig, path)
    return None
