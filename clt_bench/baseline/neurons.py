"""Neuron analysis of the most important late MLP (Hanna et al.'s MLP10 analysis, for any model).

- rank the MLP's neurons at END by their direct effect on the logits: a frozen-LayerNorm linear
  estimate for all neurons, then exact path patching (neuron -> logits, PD) for the best candidates;
- each top neuron's logit-lens outer product: mean clean activation per YY x
  (W_out[n] @ W_U[:, ZZ]), a [97, A] YY x ZZ matrix (A = the task's answer count; rows YY 2..98
  below it), beside its path-patched direct effect;
- the "units needed" curve: PD when only the top-k neurons keep their clean activations and the
  rest take corrupted values (k = 0..all; one MLP at END, ranked in-sample: a Hanna-style
  analysis, not the like-for-like comparison of ``clt_bench.compare.units``), as CSV columns
  ``k, prob_diff, fraction_of_model_pd``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clt_bench.baseline.circuits import Circuit
from clt_bench.baseline.patching import (
    PatchContext,
    Receiver,
    Sender,
    path_patch,
    resid_patch,
    run_end,
)
from clt_bench.baseline.readout import per_example_pd
from clt_bench.task.metrics import heatmap_rows


@dataclass
class NeuronAnalysis:
    layer: int
    order: list[int]  # all neurons, most important first
    exact_effect: dict[int, float]  # neuron -> path-patched direct PD change (candidates)
    linear_effect: torch.Tensor  # [d_mlp] frozen-LN logit-diff change (all neurons)
    lens_effect: torch.Tensor  # [d_mlp] logit-lens (no LN) logit-diff change
    outer: dict[int, torch.Tensor]  # top neuron -> [rows, A] outer product
    curve: list[tuple[int, float, float]]  # (k, prob_diff, fraction_of_model_pd)
    model_pd: float

    def top(self, k: int) -> list[int]:
        return self.order[:k]

    def to_dict(self, top: int) -> dict[str, Any]:
        return {
            "mlp": f"mlp{self.layer}",
            "position": "END",
            "model_prob_diff": self.model_pd,
            "ranking": "exact path-patched direct effect (PD) for the candidates, then the "
            "frozen-LayerNorm linear estimate for the rest",
            "top_neurons": [
                {
                    "neuron": n,
                    "direct_effect_prob_diff": self.exact_effect.get(n),
                    "linear_effect_logit_diff": float(self.linear_effect[n]),
                    "logit_lens_effect_logit_diff": float(self.lens_effect[n]),
                }
                for n in self.top(top)
            ],
            "units_needed": [
                {"k": k, "prob_diff": p, "fraction_of_model_pd": f} for k, p, f in self.curve
            ],
        }


@torch.no_grad()
def mlp_post_at(ctx: PatchContext, layer: int, tokens: torch.Tensor) -> torch.Tensor:
    """[n, d_mlp] MLP activations (``mlp.hook_post``) at END for ``tokens`` [n, pos]."""
    store: list[torch.Tensor] = []

    def save(t: torch.Tensor, hook: Any) -> torch.Tensor:
        store.append(t[:, ctx.end_pos].detach().clone())
        return t

    # the base run's residual stream is cached: start at ``layer`` from it
    start = layer if tokens is ctx.base_tokens else 0
    inp = ctx.base.resid_pre[layer] if start else tokens
    hooks = [(f"blocks.{layer}.mlp.hook_post", save)]
    run_end(ctx.bridge, inp, ctx.end_pos, ctx.batch.answer_ids, hooks, start_at_layer=start)
    return torch.cat(store)


def pick_layer(ctx: PatchContext, circuit: Circuit | None) -> tuple[int, dict[int, float]]:
    """The END MLP (of the circuit if it has any) with the most negative direct PD effect."""
    n_layers = ctx.bridge.cfg.n_layers
    layers = sorted({n.layer for n in circuit.at("END") if n.kind == "mlp"}) if circuit else []
    layers = layers or list(range(n_layers))
    senders = [Sender("mlp", layer, ctx.end_pos) for layer in layers]
    r = path_patch(ctx, senders, [Receiver("logits", n_layers, ctx.end_pos)])
    pd = per_example_pd(r, ctx.batch).mean(-1)
    base = float(per_example_pd(ctx.base.readout, ctx.batch).mean())
    eff = {layer: float(v) - base for layer, v in zip(layers, pd.tolist(), strict=True)}
    return min(eff, key=lambda k: eff[k]), eff


def curve_ks(d_mlp: int, dense: int) -> list[int]:
    """k = 1..dense, then steps of x1.25 up to d_mlp (always included)."""
    ks = list(range(1, min(dense, d_mlp) + 1))
    k = float(ks[-1])
    while k < d_mlp:
        k = max(k * 1.25, k + 1)
        ks.append(min(int(round(k)), d_mlp))
    return sorted(set(ks))


@torch.no_grad()
def analyse_neurons(
    ctx: PatchContext, layer: int, top: int = 10, candidates: int = 64, dense: int = 32
) -> NeuronAnalysis:
    """Run the neuron analysis of MLP ``layer`` at END (``ctx``: clean base, corrupted source)."""
    b = ctx.bridge
    end = ctx.end_pos
    yy = ctx.batch.yy
    post_c = mlp_post_at(ctx, layer, ctx.base_tokens)  # [n, d_mlp]
    post_x = mlp_post_at(ctx, layer, ctx.source_tokens)
    dpost = post_x - post_c  # [n, d_mlp]
    w_out = b.W_out[layer]  # [d_mlp, d_model]
    w_ans = b.W_U[:, ctx.batch.answer_ids]  # [d_model, A]
    dev = w_ans.device
    coef = ctx.batch.logit_diff_coefficients().to(dev, w_ans.dtype)  # [n, A]
    u = coef @ w_ans.T  # [n, d_model]: logit-difference direction per example
    ln = b.ln_final.original_component
    g = u * ln.weight / ctx.base.final_scale[:, end]  # [n, d_model]
    w_centered = w_out - w_out.mean(-1, keepdim=True)
    linear = (dpost * (g @ w_centered.T)).mean(0)  # [d_mlp]
    lens = (dpost * (u @ w_out.T)).mean(0)  # [d_mlp]
    d_mlp = int(w_out.shape[0])
    cand = torch.argsort(linear)[: min(candidates, d_mlp)].tolist()
    deltas = [dpost[:, n : n + 1] * w_out[n] for n in cand]
    senders = [Sender("mlp", layer, end)] * len(cand)
    r = path_patch(ctx, senders, [Receiver("logits", b.cfg.n_layers, end)], deltas=deltas)
    base_pd = float(per_example_pd(ctx.base.readout, ctx.batch).mean())
    pd = per_example_pd(r, ctx.batch).mean(-1)
    exact = {n: float(v) - base_pd for n, v in zip(cand, pd.tolist(), strict=True)}
    rest = [n for n in torch.argsort(linear).tolist() if n not in exact]
    order = sorted(exact, key=lambda n: exact[n]) + rest
    outer = {}
    for n in order[:top]:
        lens_row = w_out[n] @ w_ans  # [A]
        yy_dev = yy.to(dev)
        act = torch.stack(
            [
                post_c[yy_dev == y, n].mean()
                if (yy == y).any()
                else torch.tensor(float("nan"), device=dev)
                for y in heatmap_rows(w_ans.shape[1])
            ]
        )  # [rows]: YY 2..98 below the answer count
        outer[n] = (act[:, None] * lens_row[None, :]).cpu()
    ks = [0, *curve_ks(d_mlp, dense)]  # k = 0: every neuron of the MLP corrupted
    perm = torch.tensor(order, device=dev)
    curve_d = []
    for k in ks:
        corrupt = torch.ones(d_mlp, dtype=w_out.dtype, device=dev)
        corrupt[perm[:k]] = 0.0
        curve_d.append((dpost * corrupt) @ w_out)  # [n, d_model]: change of the MLP output
    readout = resid_patch(ctx, layer, end, torch.stack(curve_d))
    curve_pd = per_example_pd(readout, ctx.batch).mean(-1).tolist()
    curve = [
        (k, float(p), float(p) / base_pd if base_pd else float("nan"))
        for k, p in zip(ks, curve_pd, strict=True)
    ]
    return NeuronAnalysis(layer, order, exact, linear.cpu(), lens.cpu(), outer, curve, base_pd)
