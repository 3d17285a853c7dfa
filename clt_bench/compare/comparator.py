"""How much of a planted comparator's effect the top units at END explain (ground truth only).

On a model whose circuit was planted (CMP = the MLPs at END), ``explained_k = (PD_k - PD_cmp) /
(PD_clean - PD_cmp)``: ``PD_cmp`` is the PD with those MLP outputs at their 01-corrupted values,
``PD_k`` the PD with the top k units' writes into them clean (docs/methods.md, "planted"). Each
unit kind -- MLP neurons, CLT and PLT features (transcoders in the ``error_corrupted`` variant) --
is restricted to its writes into those outputs (``compare.units.scoped``), ranked on the ranking
half of the prompts by the units-needed criterion and scored on the evaluation half: same
prompts, positions, layers and denominator for every kind.
"""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.baseline.circuits import Circuit
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.compare.units import (
    UnitSet,
    UnitsResult,
    feature_units,
    neuron_units,
    scoped,
    units_needed_curve,
)
from clt_bench.task.dataset import TaskBatch

KS = (1, 2, 5, 10, 20)
DEFINITION = (
    "share of the planted comparator's PD effect (PD_clean - PD with the END MLPs of the planted "
    "circuit corrupted) recovered with the top k units' writes into those MLP outputs at END "
    "kept clean, everything else of them corrupted; held-out half of the prompts"
)


def comparator_layers(truth: Circuit) -> list[int]:
    """The layers of the planted circuit's MLP nodes at END (the comparator)."""
    return sorted(n.layer for n in truth.at("END") if n.kind == "mlp")


def comparator_curve(
    bridge: TransformerBridge,
    transcoder: CrossLayerTranscoder | None,
    batch: TaskBatch,
    layers: list[int],
    candidates: int = 32,
    dense: int = 32,
) -> UnitsResult:
    """One unit kind's curve in the comparator's scope (``transcoder`` None: MLP neurons)."""

    def make(clean: torch.Tensor, corrupted: torch.Tensor) -> UnitSet:
        if transcoder is None:
            units = neuron_units(bridge, clean, corrupted)
        else:
            units = feature_units(bridge, transcoder, clean, corrupted, error="corrupted")
        return scoped(units, layers, batch.end_pos)

    return units_needed_curve(bridge, make, batch, dense, candidates, extra_ks=KS)


def comparator_explained(
    bridge: TransformerBridge,
    transcoders: dict[str, CrossLayerTranscoder | None],
    batch: TaskBatch,
    truth: Circuit,
    candidates: int = 32,
    dense: int = 32,
) -> dict[str, Any]:
    """Per kind (key of ``transcoders``, e.g. "clt", "plt", "neuron" -> None): explained_k for
    k in KS, units needed for 80 %, the number of units, and the shared PD_clean / PD_cmp."""
    layers = comparator_layers(truth)
    out: dict[str, Any] = {"layers": layers, "position": "END", "definition": DEFINITION}
    for name, tc in transcoders.items():
        r = comparator_curve(bridge, tc, batch, layers, candidates, dense)
        out[name] = {
            "n_units": r.n_units,
            "prob_diff_clean": float(r.clean.mean()),
            "prob_diff_comparator_corrupted": float(r.prob_diff[0]),
            "explained": {
                int(k): float(v)
                for k, v in zip(r.ks, r.normalized, strict=True)
                if k in KS or k == r.n_units
            },
            "units_80": r.needed(0.8),
            "top": [list(n) for n in r.names[:10]],
        }
    return out


__all__ = ["KS", "DEFINITION", "comparator_layers", "comparator_curve", "comparator_explained"]
