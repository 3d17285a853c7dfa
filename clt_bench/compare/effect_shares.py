"""Where do the units act? The share of each unit kind's task effect by position and planted site.

The graphs stage reports where a transcoder's *graph influence* lies (YY / END / rest / planted
MLP sites). MLP neurons have no attribution graph of that kind, so for a like-for-like comparison
of CLT features, PLT features and MLP neurons this module uses one estimate for all three: the
two-point linear effect of unit u at position p on prompt i's PD (``compare.units``, variant with
the error term clean),

    e[i, u, p] = delta_u[i, p] * W_{u->T} . dPD_i/d out_T,

the same estimate that ranks the units of the units-needed curves. A unit sits at (its source
layer, p). Per prompt, the share of a set of sites is ``sum |e| over the units at those sites /
sum |e| over all units``; the reported share is the mean over prompts, with a 95 % bootstrap
interval over prompts. Sites: the YY token, END, every other position, and (on a model with a
planted circuit) the planted MLP nodes' (layer, position) sites (``baseline.ground_truth``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.baseline.circuits import Circuit
from clt_bench.baseline.ground_truth import mlp_sites
from clt_bench.compare.units import UnitSet, linear_effects_per_position
from clt_bench.stats import mean_ci
from clt_bench.task.dataset import TaskBatch

SHARES = ("YY", "END", "rest", "planted_sites")
DEFINITION = (
    "share of the units' absolute linear effect on each prompt's PD (|delta_u * dPD/da_u|, the "
    "units-needed ranking's estimate, error term clean) at the YY token, at END, elsewhere and at "
    "the planted MLP sites; a unit sits at its source layer and position; mean over prompts, "
    "95 % bootstrap interval over prompts"
)


def site_effects(bridge: TransformerBridge, units: UnitSet, batch: TaskBatch) -> torch.Tensor:
    """[n, L, pos] sum over the units of source layer L of |e[i, u, p]| (module docstring)."""
    per = linear_effects_per_position(bridge, units, batch)
    n, pos = per[0].shape[:2] if per else (len(batch), 0)
    layers = 1 + max((b.layer for b in units.blocks), default=-1)
    out = torch.zeros(n, layers, pos, dtype=torch.float64)
    for b, e in zip(units.blocks, per, strict=True):
        out[:, b.layer] += e.abs().sum(-1).double().cpu()
    return out


def per_prompt_shares(
    effects: torch.Tensor, yy_pos: int, truth: Circuit | None
) -> dict[str, np.ndarray]:
    """Per prompt [n] share of ``effects`` [n, L, pos] at YY, END, elsewhere and the planted
    MLP sites (NaN for a prompt with no effect, and for the sites without a ``truth``)."""
    n, _, pos = effects.shape
    end = pos - 1
    total = effects.sum((1, 2))
    safe = torch.where(total > 0, total, torch.full_like(total, math.nan))
    by_pos = effects.sum(1)  # [n, pos]
    yy = by_pos[:, yy_pos] if 0 <= yy_pos < end else torch.zeros(n, dtype=effects.dtype)
    at_end = by_pos[:, end]
    out = {"YY": yy / safe, "END": at_end / safe, "rest": (total - yy - at_end) / safe}
    if truth is not None and yy_pos >= 0:
        sites = mlp_sites(truth, yy_pos, end)
        hit = sum((effects[:, a, p] for a, p in sites if a < effects.shape[1]), torch.zeros(n))
        out["planted_sites"] = hit / safe
    else:
        out["planted_sites"] = torch.full((n,), math.nan, dtype=effects.dtype)
    return {k: v.numpy() for k, v in out.items()}


def effect_shares(
    bridge: TransformerBridge,
    units: dict[str, UnitSet],
    batch: TaskBatch,
    truth: Circuit | None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per unit kind (keys of ``units``, e.g. "neuron", "clt", "plt"): each share's mean over
    prompts and 95 % interval, and the [L, pos] mean share grid."""
    out: dict[str, Any] = {"definition": DEFINITION, "n_prompts": len(batch), "per_prompt": {}}
    for name, u in units.items():
        eff = site_effects(bridge, u, batch)
        shares = per_prompt_shares(eff, batch.yy_pos, truth)
        total = eff.sum((1, 2), keepdim=True)
        grid = (eff / torch.where(total > 0, total, torch.ones_like(total))).mean(0)
        row: dict[str, Any] = {"grid": grid.tolist()}
        for key in SHARES:
            mean, lo, hi = mean_ci(shares[key], n_boot, seed)
            row[key] = mean
            row[f"{key}_ci"] = [lo, hi]
        out[name] = row
        # the finite per-prompt values (their mean is the share): compare/per_prompt.safetensors
        out["per_prompt"][name] = {k: v[np.isfinite(v)] for k, v in shares.items()}
    return out


__all__ = ["DEFINITION", "SHARES", "effect_shares", "per_prompt_shares", "site_effects"]
