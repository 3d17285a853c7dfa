"""Do the top features act additively? Pair and set ablations against single ablations.

Features are removed from the real, unfrozen model as ``ablation.free_delta_pd`` does (their clean
decoder writes subtracted from ``hook_mlp_out`` at every position). Per pair,
``residual(i, j) = dPD(i and j) - dPD(i) - dPD(j)`` (mean over prompts) and
``interaction_share = sum |residual| / sum (|dPD(i)| + |dPD(j)|)`` over the pairs (0: additive).
The top-k sets (k = 5, 10, 20) are also removed jointly: ``joint_sum_ratio_top{k}`` = mean dPD of
the set / mean of the sum of its single dPDs (1: additive), with a seeded percentile bootstrap
95 % interval over prompts. Definitions: docs/methods.md, "features".
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.features.ablation import removal_deltas
from clt_bench.io import write_text
from clt_bench.plots import save_figure
from clt_bench.task.dataset import TaskBatch


@torch.no_grad()
def pair_interactions(
    bridge,
    clt: CrossLayerTranscoder,
    batch: TaskBatch,
    features: Sequence[tuple[int, int]],
    acts: Sequence[np.ndarray],
    rows_per_pass: int = 256,
) -> dict[str, np.ndarray | float]:
    """Single and pair free-ablation dPD of ``features`` (K of them); ``acts[u]`` [n, pos].

    Returns ``single`` [K], ``pair`` [K, K] (diagonal = single), ``residual`` [K, K] (diagonal 0)
    and ``interaction_share`` (see the module docstring).
    """
    K, n = len(features), len(batch)
    active = [set(np.nonzero(np.asarray(a).any(axis=1))[0].tolist()) for a in acts]
    sets = [(u,) for u in range(K)] + list(combinations(range(K), 2))
    rows = [(s, p) for s in sets for p in sorted(set().union(*(active[u] for u in s)))]
    deltas = removal_deltas(
        bridge, clt, batch, features, acts, [(p, s) for s, p in rows], rows_per_pass
    )
    total = {s: 0.0 for s in sets}
    per_prompt = np.zeros((K, n))  # single dPD per prompt (0 where the feature is inactive)
    for (s, p), d in zip(rows, deltas, strict=True):
        total[s] += float(d)
        if len(s) == 1:
            per_prompt[s[0], p] = d
    single = np.array([total[(u,)] for u in range(K)]) / max(n, 1)
    pair = np.diag(single)
    for i, j in combinations(range(K), 2):
        pair[i, j] = pair[j, i] = total[(i, j)] / max(n, 1)
    residual = pair - single[:, None] - single[None, :]
    np.fill_diagonal(residual, 0.0)
    iu = np.triu_indices(K, 1)
    denom = float((np.abs(single)[:, None] + np.abs(single)[None, :])[iu].sum())
    share = float(np.abs(residual[iu]).sum() / denom) if denom > 0 else float("nan")
    return {
        "single": single,
        "pair": pair,
        "residual": residual,
        "interaction_share": share,
        "single_per_prompt": per_prompt,
    }


SET_SIZES = (5, 10, 20)


def set_sizes(n_features: int) -> list[int]:
    """The top-k sets measured: k = 5, 10, 20 as far as ``n_features`` allow (else all of them)."""
    return [k for k in SET_SIZES if k <= n_features] or ([n_features] if n_features > 1 else [])


@torch.no_grad()
def joint_ablation(
    bridge,
    clt: CrossLayerTranscoder,
    batch: TaskBatch,
    features: Sequence[tuple[int, int]],
    acts: Sequence[np.ndarray],
    ks: Sequence[int],
    rows_per_pass: int = 64,
) -> np.ndarray:
    """[len(ks), n] per-prompt dPD of removing the first k of ``features`` together (the same
    free ablation as the singles: their clean decoder writes subtracted from ``hook_mlp_out``;
    0 on prompts where none of them is active)."""
    n = len(batch)
    active = [set(np.nonzero(np.asarray(a).any(axis=1))[0].tolist()) for a in acts]
    rows = [(i, p) for i, k in enumerate(ks) for p in sorted(set().union(*active[:k]))]
    removals = [(p, range(ks[i])) for i, p in rows]
    deltas = removal_deltas(bridge, clt, batch, features, acts, removals, rows_per_pass)
    out = np.zeros((len(ks), n))
    for (i, p), d in zip(rows, deltas, strict=True):
        out[i, p] = float(d)
    return out


def set_interactions(
    single_per_prompt: np.ndarray,
    joint_per_prompt: np.ndarray,
    ks: Sequence[int],
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Per k: the joint dPD of the top-k set and the sum of its single dPDs (means over prompts),
    their ratio, and the ratio's 95 % percentile bootstrap interval over prompts (paired: both
    sums resampled with the same prompts; seeded)."""
    n = single_per_prompt.shape[1]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n)) if n_boot > 0 and n > 0 else None
    out = []
    for i, k in enumerate(ks):
        joint, summed = joint_per_prompt[i], single_per_prompt[:k].sum(0)  # [n] each
        ratio = float(joint.mean() / summed.mean()) if summed.mean() != 0 else float("nan")
        lo = hi = float("nan")
        if idx is not None:
            den = summed[idx].mean(1)
            with np.errstate(divide="ignore", invalid="ignore"):
                boot = joint[idx].mean(1) / den
            boot = boot[np.isfinite(boot)]
            if len(boot):
                lo, hi = (float(np.percentile(boot, q)) for q in (2.5, 97.5))
        out.append(
            {
                "k": int(k),
                "joint_dpd": float(joint.mean()),
                "sum_single_dpd": float(summed.mean()),
                "joint_sum_ratio": ratio,
                "ci_lo": lo,
                "ci_hi": hi,
            }
        )
    return out


def write_interactions(
    result: dict[str, np.ndarray | float], names: Sequence[str], out_dir: Path
) -> list[Path]:
    """``interactions.csv`` (one row per pair) and ``interactions.png`` (the residual matrix)."""
    single, pair, res = result["single"], result["pair"], result["residual"]
    rows = [
        {
            "feature_a": names[i],
            "feature_b": names[j],
            "dpd_a": single[i],
            "dpd_b": single[j],
            "dpd_pair": pair[i, j],
            "residual": res[i, j],
        }
        for i, j in combinations(range(len(names)), 2)
    ]
    csv = write_text(out_dir / "interactions.csv", pd.DataFrame(rows).to_csv(index=False))
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    lim = float(np.abs(res).max()) or 1.0
    sns.heatmap(
        res,
        ax=ax,
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        square=True,
        xticklabels=list(names),
        yticklabels=list(names),
        cbar_kws={"label": "dPD(pair) - dPD(a) - dPD(b)"},
    )
    ax.tick_params(labelsize=8)
    ax.set_title(
        f"Pair-ablation interactions of the top {len(names)} features\n"
        f"interaction share {result['interaction_share']:.3f} (0 = additive)"
    )
    return [csv, save_figure(fig, out_dir / "interactions.png")]
