"""The planted circuit, the rediscovered one and the transcoders' influence on one grid.

Rows are layers, columns the positions the circuits use (YY, END) and every other position
("other"). Each panel colours a cell by the share of the top features' influence read at that
(layer, position) and outlines the planted MLP nodes (solid) and the rediscovered MLP nodes
(dashed); heads are listed in the panel title, since transcoder features sit at MLP sites only.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from clt_bench.baseline.circuit_overlap import FeatureSite
from clt_bench.baseline.circuits import Circuit
from clt_bench.plots import save_figure

COLUMNS = ("YY", "END", "other")


def influence_grid(sites: list[FeatureSite], influence: list[float], n_layers: int) -> np.ndarray:
    """[n_layers, 3] share of the total influence per (layer, position class)."""
    grid = np.zeros((n_layers, len(COLUMNS)))
    for s, v in zip(sites, influence, strict=True):
        col = COLUMNS.index(s.position) if s.position in COLUMNS else 2
        grid[s.layer, col] += abs(v)
    total = grid.sum()
    return grid / total if total > 0 else grid


def _outline(ax: Axes, circuit: Circuit, style: str, colour: str) -> None:
    for n in circuit.nodes:
        if n.kind == "mlp" and n.position in COLUMNS:
            col = COLUMNS.index(n.position)
            ax.add_patch(
                Rectangle(
                    (col - 0.45, n.layer - 0.45), 0.9, 0.9, fill=False, lw=2.5, ls=style, ec=colour
                )
            )


def _heads(circuit: Circuit) -> str:
    heads = [n.label for n in circuit.nodes if n.kind == "head"]
    return ", ".join(heads) if heads else "none"


def ground_truth_grid(
    grids: dict[str, np.ndarray], truth: Circuit, found: Circuit | None, path: Path, model: str
) -> Path:
    """One panel per unit kind (CLT, PLT): influence share per cell, circuits outlined."""
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids) + 1, 5.2), squeeze=False)
    for ax, (kind, grid) in zip(axes[0], grids.items(), strict=True):
        im = ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(grid.max(), 1e-9), aspect="auto")
        for (r, c), v in np.ndenumerate(grid):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=11)
        _outline(ax, truth, "-", "tab:red")
        if found is not None:
            _outline(ax, found, "--", "black")
        ax.set_xticks(range(len(COLUMNS)), COLUMNS, fontsize=11)
        ax.set_yticks(range(grid.shape[0]), [f"L{i}" for i in range(grid.shape[0])], fontsize=11)
        ax.set_xlabel("position", fontsize=11)
        ax.set_ylabel("layer (feature's encoder layer)", fontsize=11)
        ax.set_title(f"{kind}: share of top features' influence", fontsize=12)
        fig.colorbar(im, ax=ax, fraction=0.05)
    found_heads = _heads(found) if found is not None else "-"
    fig.suptitle(
        f"{model}: planted MLP nodes (red, solid) vs rediscovered (black, dashed)\n"
        f"planted heads: {_heads(truth)}; rediscovered heads: {found_heads}",
        fontsize=12,
    )
    fig.tight_layout()
    return save_figure(fig, path)
