"""The replacement model: every MLP output replaced by the CLT's reconstruction (no error terms).

``replacement_hooks(clt)`` gives TransformerLens forward hooks: at ``blocks.l.hook_resid_mid`` the
encoder of layer l reads the replacement model's own residual stream; at ``blocks.l.hook_mlp_out``
the output is replaced by sum_{l' <= l} W_dec^{l' -> l} a^{l'} + b_dec^l (+ skip). Use them with
``bridge.run_with_hooks(tokens, fwd_hooks=replacement_hooks(clt))`` for one forward at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.activations.tokens import TokenRows
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.models.bridge import FwdHooks, mlps_replaced


def replacement_hooks(clt: CrossLayerTranscoder, keep_first: bool = False) -> FwdHooks:
    """Forward hooks [(hook name, fn)] that swap every MLP output for the CLT's reconstruction.

    ``keep_first``: position 0 keeps the model's own MLP outputs (a CLT trained with
    ``activations.exclude_bos`` never saw position 0, so it does not replace it there).
    """
    L = clt.n_layers
    acts: dict[int, torch.Tensor] = {}
    resid: dict[int, torch.Tensor] = {}

    def read(layer: int) -> Callable:
        def hook(x: torch.Tensor, hook=None) -> torch.Tensor:  # x [batch, pos, d]
            w = clt.W_enc[layer]
            xs = x.to(w.dtype) * clt.input_scale[layer]
            pre = xs @ w.T + clt.b_enc[layer]  # [batch, pos, F]
            acts[layer] = _activate_layer(clt, pre, layer)
            resid[layer] = x
            return x

        return hook

    def write(layer: int) -> Callable:
        def hook(y: torch.Tensor, hook=None) -> torch.Tensor:  # y [batch, pos, d]
            out = clt.b_dec[layer].expand(*y.shape[:-1], -1)
            for src in range(layer + 1):
                if layer in clt.target_layers(src):
                    out = out + acts[src] @ clt.W_dec[src][:, layer - src, :]
            if clt.W_skip is not None:
                out = (
                    out + (resid[layer].to(out.dtype) * clt.input_scale[layer]) @ clt.W_skip[layer]
                )
            out = out / clt.output_scale[layer]
            if keep_first:
                out = torch.cat([y[:, :1].to(out.dtype), out[:, 1:]], dim=1)
            if layer == L - 1:
                acts.clear()
                resid.clear()
            return out.to(y.dtype)

        return hook

    hooks: FwdHooks = []
    for layer in range(L):
        hooks.append((f"blocks.{layer}.hook_resid_mid", read(layer)))
        hooks.append((f"blocks.{layer}.hook_mlp_out", write(layer)))
    return hooks


def mlps_skipped(bridge: TransformerBridge, keep_first: bool) -> AbstractContextManager:
    """Around forwards with ``replacement_hooks`` or ``zero_mlp_hooks``: they replace every MLP
    output, so the MLPs need not run (``mlps_replaced``), unless ``keep_first`` keeps position 0's
    own."""
    return contextlib.nullcontext() if keep_first else mlps_replaced(bridge)


def _activate_layer(clt: CrossLayerTranscoder, pre: torch.Tensor, layer: int) -> torch.Tensor:
    """Layer ``layer``'s inference activation on pre [..., F] (BatchTopK: the learned threshold,
    as ``CrossLayerTranscoder.activate`` in eval mode)."""
    kind = clt.spec.activation
    if kind in ("jumprelu", "batchtopk"):
        return pre * (pre > clt.threshold[layer])
    if kind == "relu":
        return torch.relu(pre)
    k = min(clt.spec.k, pre.shape[-1])
    vals, idx = torch.relu(pre).topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals)


def zero_mlp_hooks(n_layers: int, keep_first: bool = False) -> FwdHooks:
    """Hooks that zero-ablate every MLP output (the CE-loss-recovered baseline); ``keep_first``
    leaves position 0 alone, like ``replacement_hooks``."""

    def zero(y: torch.Tensor, hook=None) -> torch.Tensor:
        out = torch.zeros_like(y)
        if keep_first:
            out[:, :1] = y[:, :1]
        return out

    return [(f"blocks.{layer}.hook_mlp_out", zero) for layer in range(n_layers)]


@torch.no_grad()
def agreement_metrics(
    bridge: TransformerBridge,
    clt: CrossLayerTranscoder,
    rows: TokenRows,
    batch_size: int = 32,
    keep_first: bool = False,
) -> dict[str, float]:
    """Top-1 agreement, KL(original || replacement) and CE-loss recovered at real tokens.

    CE is next-token loss at positions whose next token is real; top-1 / KL use every real token.
    ``keep_first``: position 0 keeps the model's MLP outputs in both the replacement and the
    zero-ablation run (see ``replacement_hooks``) and is left out of every average.
    """
    device = next(bridge.parameters()).device
    hooks = replacement_hooks(clt, keep_first)
    zero = zero_mlp_hooks(clt.n_layers, keep_first)
    n_tok = n_next = 0
    agree = kl = ce_orig = ce_rep = ce_zero = 0.0
    for i in range(0, rows.tokens.shape[0], batch_size):
        tokens = rows.tokens[i : i + batch_size].to(device)
        mask = rows.mask[i : i + batch_size].to(device)
        if keep_first:
            mask = mask.clone()
            mask[:, 0] = False
        lo = bridge(tokens).float().log_softmax(-1)
        with mlps_skipped(bridge, keep_first):
            lr = bridge.run_with_hooks(tokens, fwd_hooks=hooks).float().log_softmax(-1)
            logits_z = bridge.run_with_hooks(tokens, fwd_hooks=zero).float()
        agree += float(((lo.argmax(-1) == lr.argmax(-1)) & mask).sum())
        kl += float(((lo.exp() * (lo - lr)).sum(-1) * mask).sum())
        n_tok += int(mask.sum())
        nxt_mask = mask[:, 1:] & mask[:, :-1]
        target = tokens[:, 1:, None]
        ce_orig -= float((lo[:, :-1].gather(-1, target)[..., 0] * nxt_mask).sum())
        ce_rep -= float((lr[:, :-1].gather(-1, target)[..., 0] * nxt_mask).sum())
        # the zero-ablated run's log-probabilities at the targets only
        lz = logits_z[:, :-1].gather(-1, target)[..., 0] - logits_z[:, :-1].logsumexp(-1)
        ce_zero -= float((lz * nxt_mask).sum())
        n_next += int(nxt_mask.sum())
    ce_o, ce_r, ce_z = (v / max(n_next, 1) for v in (ce_orig, ce_rep, ce_zero))
    return {
        "replacement_top1_agreement": agree / max(n_tok, 1),
        "kl": kl / max(n_tok, 1),
        "ce_loss_original": ce_o,
        "ce_loss_replacement": ce_r,
        "ce_loss_zero_ablation": ce_z,
        "ce_loss_recovered": (ce_z - ce_r) / (ce_z - ce_o) if ce_z != ce_o else float("nan"),
        "eval_tokens_replacement": n_tok,
    }
