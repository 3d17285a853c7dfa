"""PNG drawing of a pruned attribution graph: prompt positions on x, layers on y.

Each position's column is as wide as its most crowded (position, layer) cell; feature and error
nodes are sized and coloured by influence, edges blue (+) or red (-) and as strong as their share
of the receiving node's strongest kept input; the most influential features are labelled
``L<layer>/<feature>`` where a label fits (``_place_labels``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.lines import Line2D

from clt_bench.graphs.graph import Graph
from clt_bench.plots import save_figure  # (sets matplotlib's headless backend)

STYLE = {  # kind -> (marker, colour)
    "feature": ("o", "#4c72b0"),
    "error": ("s", "#999999"),
    "token": ("^", "#55a868"),
    "target": ("D", "#c44e52"),
}
NODE_GAP = 0.45  # x units between nodes of one cell
LABEL_LEVELS = 3


def _positions(graph: Graph, kept: list[int]) -> tuple[dict[int, tuple[float, float]], np.ndarray]:
    """Node -> (x, y) and the x range of every prompt position's column: [pos + 1] edges."""
    cells: dict[tuple[int, int], list[int]] = {}
    for i in kept:
        d = graph.describe(i)
        y = {"token": -1, "target": graph.n_layers}.get(d["kind"], d["layer"])
        cells.setdefault((d["pos"], y), []).append(i)
    width = np.ones(graph.n_pos)
    for (pos, _), members in cells.items():
        width[pos] = max(width[pos], NODE_GAP * len(members) + 0.3)
    edges = np.concatenate([[0.0], np.cumsum(width)])
    centre = (edges[:-1] + edges[1:]) / 2
    xy = {}
    for (pos, y), members in cells.items():
        members.sort(key=lambda i: float(graph.influence[i]), reverse=True)
        k = len(members)
        span = NODE_GAP * (k - 1)
        # most influential in the middle, the rest alternating outwards
        slots = sorted(range(k), key=lambda j: abs(j - (k - 1) / 2))
        for j, i in zip(slots, members, strict=True):
            xy[i] = (float(centre[pos]) - span / 2 + NODE_GAP * j, float(y))
    return xy, edges


def _place_labels(ax: Axes, items: list[tuple[float, float, str]], char_w: float) -> None:
    """Label (x, y, text) points without overlaps: per row, greedy over LABEL_LEVELS levels."""
    ends: dict[tuple[float, int], float] = {}
    for x, y, text in sorted(items):
        w = char_w * len(text)
        for level in range(LABEL_LEVELS):
            if ends.get((y, level), -np.inf) < x - w / 2:
                ends[(y, level)] = x + w / 2
                ax.annotate(
                    text,
                    (x, y),
                    xytext=(0, 7 + 10 * level),
                    textcoords="offset points",
                    fontsize=8,
                    ha="center",
                    va="bottom",
                    zorder=4,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
                )
                break


def _draw_edges(ax: Axes, graph: Graph, xy: dict[int, tuple[float, float]], max_edges: int) -> None:
    """Every kept edge into a target, then the strongest others, each as strong (wide, dark) as
    its share of the receiving node's strongest kept input: targets and features have different
    scales, so raw weights would hide every edge into the target."""
    dst, src = graph.edge_mask.nonzero(as_tuple=True)
    if not len(dst):
        return
    w = graph.adjacency[dst, src]
    row_max = torch.zeros(graph.n_nodes, dtype=torch.float64).scatter_reduce_(
        0, dst, w.abs().double(), "amax"
    )
    share = w.abs().double() / row_max[dst].clamp_min(1e-30)
    into_target = (dst >= graph.offsets()["target"]).double()
    order = (share + 2.0 * into_target).argsort(descending=True)[:max_edges]
    for e in order.flip(0).tolist():  # strongest drawn last (on top)
        s, t, wt, sh = int(src[e]), int(dst[e]), float(w[e]), float(share[e])
        if s in xy and t in xy:
            ax.plot(
                [xy[s][0], xy[t][0]],
                [xy[s][1], xy[t][1]],
                lw=0.3 + 2.2 * sh,
                color="#2166ac" if wt > 0 else "#b2182b",
                alpha=0.15 + 0.6 * sh,
                zorder=1,
            )


def _draw_nodes(
    ax: Axes, graph: Graph, xy: dict[int, tuple[float, float]], kinds: dict[int, str]
) -> PathCollection | None:
    """Tokens and targets in their colour, features and errors sized and coloured by influence
    (relative to the largest); the latter's scatter, for the colour bar."""
    infl = graph.influence.double()
    ranked = [i for i in kinds if kinds[i] in ("feature", "error")]
    imax = max((float(infl[i]) for i in ranked), default=0.0) or 1.0
    sc = None
    for kind, (marker, colour) in STYLE.items():
        nodes = [i for i in kinds if kinds[i] == kind]  # kept nodes in graph order
        if not nodes:
            continue
        pts = np.array([xy[i] for i in nodes])
        common: dict[str, Any] = {
            "marker": marker,
            "zorder": 3,
            "edgecolors": "black",
        }
        if kind in ("feature", "error"):
            val = np.array([float(infl[i]) for i in nodes]) / imax
            sc = ax.scatter(
                pts[:, 0],
                pts[:, 1],
                c=val,
                cmap=plt.get_cmap("viridis_r"),
                vmin=0,
                vmax=1,
                s=14 + 160 * np.sqrt(np.clip(val, 0, 1)),
                linewidths=0.4,
                **common,
            )
        else:
            ax.scatter(pts[:, 0], pts[:, 1], c=colour, s=50, linewidths=0.4, **common)
    return sc


def _legend(ax: Axes) -> None:
    handles = [
        Line2D(
            [],
            [],
            marker=m,
            ls="",
            mfc=c if k in ("token", "target") else "#bbbbbb",
            mec="black",
            mew=0.4,
            ms=6,
            label=k,
        )
        for k, (m, c) in STYLE.items()
    ]
    handles += [
        Line2D([], [], color="#2166ac", lw=1.5, label="edge +"),
        Line2D([], [], color="#b2182b", lw=1.5, label="edge −"),
    ]
    ax.legend(
        handles=handles,
        loc="upper left",
        fontsize=8,
        ncol=6,
        frameon=True,
        title="node size and colour: influence on the target",
        title_fontsize=8,
    )


def draw_graph(
    graph: Graph,
    path: str | os.PathLike[str],
    title: str | None = None,
    max_edges: int = 400,
    n_labels: int = 16,
) -> Path:
    """Draw the kept nodes and the ``max_edges`` strongest kept edges (blue +, red -)."""
    kept = graph.node_mask.nonzero()[:, 0].tolist()
    xy, edges = _positions(graph, kept)
    x_max = float(edges[-1])
    fig_w = float(np.clip(0.55 * x_max + 3, 7.0, 30.0))
    fig, ax = plt.subplots(figsize=(fig_w, 1.2 * graph.n_layers + 3.5))
    _draw_edges(ax, graph, xy, max_edges)
    kinds = {i: graph.describe(i)["kind"] for i in kept}
    sc = _draw_nodes(ax, graph, xy, kinds)
    feats = sorted(
        (i for i in kept if kinds[i] == "feature"),
        key=lambda i: float(graph.influence[i]),
        reverse=True,
    )
    char_w = x_max / (fig_w * 72 / 5.6)  # x units per character at fontsize 8
    labels = []
    for i in feats[:n_labels]:
        d = graph.describe(i)
        labels.append((xy[i][0], xy[i][1], f"L{d['layer']}/{d['feature']}"))
    _place_labels(ax, labels, char_w)
    for i in kept:
        if kinds[i] == "target":
            ax.annotate(
                graph.describe(i)["label"],
                xy[i],
                fontsize=8,
                xytext=(6, 4),
                textcoords="offset points",
            )
    ax.set_xticks((edges[:-1] + edges[1:]) / 2)
    ax.set_xticklabels(
        [repr(s)[1:-1] for s in graph.token_strings], rotation=60, ha="right", fontsize=8
    )
    ax.set_yticks(range(-1, graph.n_layers + 1))
    ax.set_yticklabels(["emb"] + [f"L{i}" for i in range(graph.n_layers)] + ["out"])
    ax.set_xlim(-0.2, x_max + 0.2)
    ax.set_ylim(-1.6, graph.n_layers + 0.9)
    s = graph.scores
    ax.set_title(
        title
        or (
            f"{graph.prompt!r}\ncompleteness {s.get('completeness', 0):.3f}  "
            f"replacement {s.get('replacement', 0):.3f}  (pruned "
            f"{s.get('pruned_completeness', 0):.3f} / "
            f"{s.get('pruned_replacement', 0):.3f})"
        ),
        fontsize=8,
    )
    _legend(ax)
    if sc is not None:
        cb = fig.colorbar(sc, ax=ax, fraction=0.025, pad=0.01)
        cb.set_label("influence / max influence", fontsize=8)
        cb.ax.tick_params(labelsize=8)
    return save_figure(fig, path)
