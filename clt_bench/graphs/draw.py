"""PNG drawing of a pruned attribution graph: prompt positions on x, layers on y."""

from __future__ import annotations

import os
from pathlib import Path

from clt_bench.graphs.graph import Graph
from clt_bench.plots import plt, save_figure

STYLE = {  # kind -> (marker, colour)
    "feature": ("o", "#4c72b0"),
    "error": ("s", "#999999"),
    "token": ("^", "#55a868"),
    "target": ("D", "#c44e52"),
}


def _positions(graph: Graph, kept: list[int]) -> dict[int, tuple[float, float]]:
    """Node -> (x, y): x = position (nodes in the same cell spread sideways), y = layer."""
    cells: dict[tuple[int, int], list[int]] = {}
    for i in kept:
        d = graph.describe(i)
        y = {"token": -1, "target": graph.n_layers}.get(d["kind"], d["layer"])
        cells.setdefault((d["pos"], y), []).append(i)
    xy = {}
    for (pos, y), members in cells.items():
        k = len(members)
        for j, i in enumerate(members):
            offset = 0.0 if k == 1 else (j / (k - 1) - 0.5) * 0.8
            xy[i] = (pos + offset, float(y))
    return xy


def draw_graph(graph: Graph, path: str | os.PathLike[str], title: str | None = None,
               max_edges: int = 400) -> Path:
    """Draw the kept nodes and the ``max_edges`` strongest kept edges (blue +, red -)."""
    kept = graph.node_mask.nonzero()[:, 0].tolist()
    xy = _positions(graph, kept)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * graph.n_pos + 2), 1.1 * graph.n_layers + 3))
    dst, src = graph.edge_mask.nonzero(as_tuple=True)
    if len(dst):
        w = graph.adjacency[dst, src]
        order = w.abs().argsort(descending=True)[:max_edges]
        wmax = float(w.abs().max()) or 1.0
        for e in order.tolist():
            s, t, wt = int(src[e]), int(dst[e]), float(w[e])
            if s in xy and t in xy:
                ax.plot([xy[s][0], xy[t][0]], [xy[s][1], xy[t][1]], lw=0.3 + 2.2 * abs(wt) / wmax,
                        color="#2166ac" if wt > 0 else "#b2182b",
                        alpha=0.2 + 0.6 * abs(wt) / wmax, zorder=1)
    for kind, (marker, colour) in STYLE.items():
        pts = [xy[i] for i in kept if graph.describe(i)["kind"] == kind]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, c=colour, s=36,
                       zorder=2, label=kind, edgecolors="black", linewidths=0.4)
    top = {(f["layer"], f["pos"], f["feature"]) for f in graph.top_features(8)}
    for i in kept:
        d = graph.describe(i)
        if d["kind"] == "feature" and (d["layer"], d["pos"], d["feature"]) in top:
            ax.annotate(str(d["feature"]), xy[i], fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        if d["kind"] == "target":
            ax.annotate(d["label"], xy[i], fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xticks(range(graph.n_pos))
    ax.set_xticklabels([repr(s)[1:-1] for s in graph.token_strings], rotation=60, ha="right",
                       fontsize=7)
    ax.set_yticks(range(-1, graph.n_layers + 1))
    ax.set_yticklabels(["emb"] + [f"L{i}" for i in range(graph.n_layers)] + ["out"])
    ax.set_xlim(-0.8, graph.n_pos - 0.2)
    ax.set_ylim(-1.6, graph.n_layers + 0.6)
    s = graph.scores
    ax.set_title(title or (f"{graph.prompt!r}\ncompleteness {s.get('completeness', 0):.3f}  "
                           f"replacement {s.get('replacement', 0):.3f}  (pruned "
                           f"{s.get('pruned_completeness', 0):.3f} / "
                           f"{s.get('pruned_replacement', 0):.3f})"), fontsize=8)
    ax.legend(loc="upper left", fontsize=6, frameon=False, ncol=4)
    return save_figure(fig, path)
