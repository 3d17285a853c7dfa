"""CLT features vs a circuit (heads and MLPs at END or YY) at layer x position granularity.

A feature lives at (read layer, position) and writes into the MLP outputs of its target layers at
that position. **Node overlap**: precision and recall of the top-K features' (layer, position)
cells at END or YY against the circuit's cells (all nodes, or MLPs only: what a transcoder
replaces). **Influence share**: of the features' |effect| split over the layers they write
(``write_effects`` [K, L]), the share written into the circuit's MLP cells. Definitions:
docs/methods.md, "compare".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from clt_bench.baseline.circuits import Circuit
from clt_bench.errors import UserError

Cell = tuple[int, str]  # (layer, "END" | "YY")


@dataclass(frozen=True)
class FeatureSite:
    """Where one selected feature lives: read ``layer`` and ``position`` (END, YY or other)."""

    layer: int
    position: str


def circuit_cells(circuit: Circuit, kind: str = "all") -> set[Cell]:
    """(layer, position) cells of the circuit's nodes (``kind``: all | mlp | head)."""
    if kind not in ("all", "mlp", "head"):
        raise UserError(f"unknown circuit node kind '{kind}' (all, mlp or head).")
    return {(n.layer, n.position) for n in circuit.nodes if kind == "all" or n.kind == kind}


def precision_recall(found: set[Cell], truth: set[Cell]) -> dict[str, float | int]:
    """Precision, recall and F1 of ``found`` cells against ``truth`` cells (NaN when empty)."""
    inter = len(found & truth)
    prec = inter / len(found) if found else float("nan")
    rec = inter / len(truth) if truth else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if found and truth and prec + rec > 0 else float("nan")
    return {
        "precision": prec,
        "recall": rec,
        "f1": f1,
        "n_found": len(found),
        "n_truth": len(truth),
        "n_common": inter,
    }


def node_overlap(sites: Sequence[FeatureSite], circuit: Circuit) -> dict[str, float | int]:
    """Precision/recall of the features' cells vs the circuit's cells (all nodes and MLPs only)."""
    found = {(s.layer, s.position) for s in sites if s.position in ("END", "YY")}
    return {
        f"{kind}_{k}": v
        for kind in ("all", "mlp")
        for k, v in precision_recall(found, circuit_cells(circuit, kind)).items()
    }


def influence_share(
    sites: Sequence[FeatureSite], write_effects: npt.ArrayLike, circuit: Circuit
) -> float:
    """Share of the features' |effect| that is written into the circuit's MLP cells.

    ``write_effects`` [K, L]: feature i's attributed effect carried by its write into layer l.
    """
    w = np.abs(np.asarray(write_effects, dtype=np.float64))
    if w.ndim != 2 or w.shape[0] != len(sites):
        raise UserError("write_effects must be [n_features, n_layers] matching the sites.")
    mlp = circuit_cells(circuit, "mlp")
    inside = sum(
        w[i, layer]
        for i, s in enumerate(sites)
        for layer in range(w.shape[1])
        if (layer, s.position) in mlp
    )
    total = float(w.sum())
    return float(inside / total) if total > 0 else float("nan")


def per_component_share(
    position: str, write_effects: npt.ArrayLike, circuit: Circuit
) -> dict[str, float]:
    """One feature: share of its |effect| written into each circuit MLP at its position.

    ``write_effects`` [L]. Keys are node labels (e.g. ``mlp2@END``); empty when the position is
    neither END nor YY or the feature has no effect.
    """
    w = np.abs(np.asarray(write_effects, dtype=np.float64))
    total = float(w.sum())
    if total <= 0:
        return {}
    return {
        n.label: float(w[n.layer] / total)
        for n in circuit.nodes
        if n.kind == "mlp" and n.position == position and n.layer < len(w)
    }


def model_identity(name: str) -> str:
    """A model name reduced to its identity: ``hf:openai-community/gpt2`` and ``gpt2`` are the same
    weights, and so is ``hf:<local folder>`` of GPT-2 small's architecture and tokenizer
    (``models.hub.is_gpt2``); ``gpt2-random`` (random weights of GPT-2's shape) is not GPT-2."""
    from clt_bench.models.hub import is_gpt2

    if is_gpt2(name.strip()):
        return "gpt2"
    n = name.strip().lower()
    n = n[3:] if n.startswith("hf:") else n
    return n.removeprefix("openai-community/")


def published_applies(circuit: Circuit, model_name: str) -> bool:
    """Whether a published circuit was found in this model: the circuit's ``model`` names the
    same weights (by identity, not by shape -- a random or other 12 x 12 model gets none)."""
    return bool(circuit.model) and model_identity(circuit.model) == model_identity(model_name)
