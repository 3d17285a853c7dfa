"""The units-needed curve of CLT features, in the style of the baseline's neuron curve.

For k features (a ranking of (layer, feature id), best first) the real model runs with live
attention and every MLP output replaced by

    out_l = recon_corr_l + sum_{u in top k, u writes l} (a_u^clean - a_u^corr) * W_dec[u -> l] + e_l

i.e. the CLT's reconstruction in which the top-k features keep their clean activations (at every
position) and all other features take their activations on the corrupted prompt (fixed, patched
values, as the baseline's neurons). ``background`` fixes the rest of the model:

- ``"clean"`` (the baseline's style; default): clean tokens and clean error nodes e_l -- only the
  features are corrupted. k = all features gives the clean PD exactly.
- ``"corrupted"``: corrupted tokens and corrupted error nodes -- the features must carry the task
  on their own. k = 0 gives the corrupted PD exactly.

Each point is one forward pass over the prompts; only END is unembedded.
Shapes: n prompts, pos positions, L layers, F features per layer, d = d_model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clt_bench.baseline.neurons import curve_ks
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.clt.replacement import replacement_hooks
from clt_bench.errors import UserError
from clt_bench.features.ablation import end_logits_via, pd_of
from clt_bench.graphs.replacement import build_replacement
from clt_bench.task.dataset import TaskBatch

BACKGROUNDS = ("clean", "corrupted")


@torch.no_grad()
def units_curve(bridge, clt: CrossLayerTranscoder, batch: TaskBatch,
                ranking: Sequence[tuple[int, int]], ks: Sequence[int] | None = None,
                background: str = "clean", dense: int = 32) -> list[dict[str, float | int]]:
    """Rows {k, prob_diff, fraction_of_model_pd} for k in ``ks`` (default 0..dense, then x1.25
    up to len(ranking)), plus a last row with every CLT feature clean (k = -1, "all")."""
    if background not in BACKGROUNDS:
        raise UserError(f"unknown curve background '{background}' (clean or corrupted).")
    K = len(ranking)
    ks = sorted({0, *(curve_ks(K, dense) if K else [])} if ks is None else set(ks))
    if any(k < 0 or k > K for k in ks):
        raise UserError(f"curve points must lie in 0..{K} (the ranking's length).")
    dev = next(bridge.parameters()).device
    rm_c = build_replacement(bridge, clt, batch.clean)
    rm_x = build_replacement(bridge, clt, batch.corrupted)
    bg = rm_c if background == "clean" else rm_x
    recon_x = rm_x.mlp_out - rm_x.errors  # [n, pos, L, d]
    base = recon_x + bg.errors
    diff = rm_c.acts - rm_x.acts  # [n, pos, L, F]
    tokens = bg.tokens.to(dev)
    clean_pd = float(pd_of(rm_c.logits, batch.yy, batch).mean())

    def run(outs: torch.Tensor) -> float:
        def hook(t: int):
            return lambda y, hook: outs[:, :, t].to(y.dtype)

        hooks = [(f"blocks.{t}.hook_mlp_out", hook(t)) for t in range(clt.n_layers)]
        logits = end_logits_via(bridge, lambda: bridge.run_with_hooks(tokens, fwd_hooks=hooks))
        return float(pd_of(logits, batch.yy, batch).mean())

    rows: list[dict[str, float | int]] = []
    cum = base.clone()
    done = 0
    for k in ks:
        for layer, fid in ranking[done:k]:
            a = diff[:, :, layer, fid]  # [n, pos]
            for tgt in clt.target_layers(layer):
                dec = clt.layer_decoder(layer, tgt)[fid].detach().to(cum.dtype)
                cum[:, :, tgt] += a[..., None] * dec
        done = k
        pd = run(cum)
        rows.append({"k": k, "prob_diff": pd, "fraction_of_model_pd": pd / clean_pd})
    pd_all = run(rm_c.mlp_out - rm_c.errors + bg.errors)
    rows.append({"k": -1, "prob_diff": pd_all, "fraction_of_model_pd": pd_all / clean_pd})
    return rows


def units_needed(rows: Sequence[dict[str, float | int]], fraction: float) -> int | None:
    """Smallest k (>= 0) whose fraction_of_model_pd reaches ``fraction``; None if none does."""
    hits = [int(r["k"]) for r in rows if int(r["k"]) >= 0 and
            float(r["fraction_of_model_pd"]) >= fraction]
    return min(hits) if hits else None


@torch.no_grad()
def replacement_pd(bridge, clt: CrossLayerTranscoder, batch: TaskBatch) -> dict[str, float]:
    """PD of the model and of its replacement model (every MLP -> CLT, no errors) on ``batch``."""
    dev = next(bridge.parameters()).device
    tokens = batch.clean.to(dev)
    model = end_logits_via(bridge, lambda: bridge(tokens))
    repl = end_logits_via(bridge, lambda: bridge.run_with_hooks(
        tokens, fwd_hooks=replacement_hooks(clt)))
    pd_m = float(pd_of(model, batch.yy, batch).mean())
    pd_r = float(pd_of(repl, batch.yy, batch).mean())
    agree = float((model.argmax(-1) == repl.argmax(-1)).double().mean())
    return {"model_prob_diff": pd_m, "replacement_prob_diff": pd_r,
            "replacement_pd_ratio": pd_r / pd_m if pd_m else float("nan"),
            "replacement_top1_agreement_end": agree}


def curve_array(rows: Sequence[dict[str, float | int]]) -> np.ndarray:
    """[m, 3] (k, prob_diff, fraction) of the finite-k rows."""
    return np.array([[r["k"], r["prob_diff"], r["fraction_of_model_pd"]] for r in rows
                     if int(r["k"]) >= 0], dtype=np.float64)
