"""Baseline figures: path-patching heatmaps, circuit graph, neuron panels, units-needed curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from clt_bench.baseline.circuits import Circuit, Node
from clt_bench.baseline.discovery import Step
from clt_bench.baseline.neurons import NeuronAnalysis
from clt_bench.plots import (  # (headless backend set)
    Answers,
    caption_below,
    mark_answers,
    mark_caption,
    save_figure,
)


def step_heatmap(step: Step, n_heads: int, path: Path, model: str) -> Path:
    """Effects of one sweep: per position a [layers, heads + MLP] grid (fraction of the PD gap)."""
    fig, axes = plt.subplots(1, 2, figsize=(3.2 + 0.45 * (n_heads + 1) * 2, 3.6), squeeze=False)
    vals = torch.cat([e.flatten() for e in step.effects.values()])
    vmax = float(np.nanmax(np.abs(vals.numpy()))) if torch.isfinite(vals).any() else 1.0
    cols = [f"h{h}" for h in range(n_heads)] + ["MLP"]
    recv = ", ".join(step.receivers[:6]) + (" ..." if len(step.receivers) > 6 else "")
    for ax, (pos, grid) in zip(axes[0], step.effects.items(), strict=True):
        ax.set_title(f"senders at {pos}", fontsize=9)
        if not torch.isfinite(grid).any():  # an empty frame would not say why it is empty
            ax.set(xticks=[], yticks=[])
            ax.text(
                0.5,
                0.5,
                f"no sender at {pos}:\nno component at {pos} lies\nupstream of the receivers",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=9,
            )
            continue
        sns.heatmap(
            grid.numpy(),
            ax=ax,
            cmap="RdBu",
            center=0.0,
            vmin=-vmax or -1,
            vmax=vmax or 1,
            xticklabels=cols,
            yticklabels=list(range(grid.shape[0])),
            cbar_kws={"label": "ΔPD / (clean - corrupted PD)"},
        )
        ax.set_xlabel("head / MLP")
        ax.set_ylabel("layer")
    fig.suptitle(f"{model}: path patching step {step.index} -> {recv}", fontsize=9)
    fig.subplots_adjust(wspace=0.45)
    return save_figure(fig, path)


def _default_edges(circuit: Circuit) -> list[tuple[str, str]]:
    """Edges for a circuit given by its nodes only: YY -> END heads -> END MLPs -> logits."""
    edges: list[tuple[str, str]] = []
    for n in circuit.nodes:
        if n.position == "YY":
            edges += [
                (n.label, m.label)
                for m in circuit.at("END")
                if m.kind == "head" and m.order > n.order
            ]
        elif n.kind == "head":
            mlps = [m for m in circuit.at("END") if m.kind == "mlp" and m.order > n.order]
            edges += [(n.label, m.label) for m in mlps] or [(n.label, "logits@END")]
        else:
            edges.append((n.label, "logits@END"))
    return edges


def circuit_graph(circuit: Circuit, n_layers: int, path: Path) -> Path:
    """Nodes by layer (x) and position (y band), with the circuit's edges (or, without edges,
    YY -> END heads -> END MLPs -> logits)."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * n_layers, 4.0))
    xy: dict[str, tuple[float, float]] = {}
    for pos, y0 in (("YY", 0.0), ("END", 2.0)):
        by_layer: dict[int, list[Node]] = {}
        for node in circuit.at(pos):
            by_layer.setdefault(node.layer, []).append(node)
        for layer, nodes in by_layer.items():
            for i, node in enumerate(sorted(nodes, key=lambda n: (n.kind, n.head))):
                x = layer + (0.45 if node.kind == "mlp" else 0.0)
                xy[node.label] = (x, y0 + 0.35 * (i - (len(nodes) - 1) / 2))
    xy["logits@END"] = (n_layers + 0.3, 2.0)
    edges = list(circuit.edges or [])
    if any(a == "embed@YY" for a, _ in edges):  # the clean input path discovery kept
        xy["embed@YY"] = (-0.6, 0.0)
    for a, b in edges or _default_edges(circuit):
        if a in xy and b in xy:
            ax.annotate(
                "", xy=xy[b], xytext=xy[a], arrowprops=dict(arrowstyle="->", color="0.6", lw=0.6)
            )
    for label, (x, y) in xy.items():
        color = "#d62728" if label.startswith("mlp") else "#1f77b4"
        if label.startswith(("logits", "embed")):
            color = "0.2"
        ax.scatter([x], [y], s=140, color=color, zorder=3)
        ax.text(x, y + 0.17, label.split("@")[0], ha="center", fontsize=8, zorder=4)
    ax.set_yticks([0, 2], ["YY", "END"])
    ax.set_xticks(range(n_layers))
    ax.set_xlabel("layer")
    ax.set_ylim(-1.2, 3.2)
    ax.set_title(
        f"circuit '{circuit.name}': {len(circuit.nodes)} nodes "
        f"({circuit.n_heads} heads, {circuit.n_mlps} MLPs)",
        fontsize=9,
    )
    return save_figure(fig, path)


def neuron_panels(
    na: NeuronAnalysis, top: int, path: Path, model: str, answers: Answers | None = None
) -> Path:
    """Each top neuron's logit-lens outer product (YY x ZZ) titled with its direct effect;
    ``answers``: an exact task's answer per row (``TaskBatch.row_answers``), else the diagonal."""
    ns = na.top(top)
    cols = min(5, len(ns))
    rows = (len(ns) + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols, 2.4 * rows), squeeze=False, layout="constrained"
    )
    for ax, n in zip(axes.flat, ns, strict=False):
        m = na.outer[n].numpy()
        v = float(np.nanmax(np.abs(m))) or 1.0
        r, w = m.shape  # rows YY = 2.., columns ZZ = 0..(the task's answer count - 1)
        # cell (i, j) spans [j, j + 1] x [i, i + 1], as in a seaborn heatmap (mark_answers)
        ax.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto", extent=(0, w, r, 0))
        mark_answers(ax, range(2, 2 + r), w, answers, color="k")
        eff = na.exact_effect.get(n)
        ax.set_title(f"n{n}: ΔPD {eff:+.3f}" if eff is not None else f"n{n}", fontsize=8)
        xs, ys = (0, w // 2, w - 1), (0, r // 2, r - 1)  # first, middle and last cell
        ax.set_xticks([t + 0.5 for t in xs], [str(t) for t in xs])
        ax.set_yticks([t + 0.5 for t in ys], [f"{2 + t:02d}" for t in ys])
    for ax in list(axes.flat)[len(ns) :]:
        ax.axis("off")
    fig.suptitle(
        f"{model}: mlp{na.layer} top neurons — logit-lens outer product (rows YY, cols ZZ)",
        fontsize=9,
    )
    caption_below(fig, mark_caption(answers))
    return save_figure(fig, path)


def neuron_scatter(na: NeuronAnalysis, path: Path, model: str) -> Path:
    """Logit-lens (outer-product) effect vs path-patched direct effect for the ranked candidates."""
    ns = list(na.exact_effect)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.scatter([float(na.lens_effect[n]) for n in ns], [na.exact_effect[n] for n in ns], s=10)
    ax.axhline(0, color="0.7", lw=0.6)
    ax.axvline(0, color="0.7", lw=0.6)
    ax.set_xlabel("logit-lens effect on logit diff (act x W_out·W_U)")
    ax.set_ylabel("path-patched direct effect on PD")
    ax.set_title(f"{model}: mlp{na.layer} neurons", fontsize=9)
    return save_figure(fig, path)


def units_curve(na: NeuronAnalysis, path: Path, model: str) -> Path:
    ks = [k for k, _, _ in na.curve]
    fr = [f for _, _, f in na.curve]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.plot(ks, fr, marker=".", ms=3, label=f"mlp{na.layer} neurons")
    ax.axhline(1.0, color="0.6", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("k units with clean activations (rest corrupted)")
    ax.set_ylabel("PD / model PD")
    ax.set_title(f"{model}: units needed to recover PD", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
