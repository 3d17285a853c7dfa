"""Quality metrics of a trained CLT on held-out text (docs/methods.md#clt)."""

from __future__ import annotations

from typing import Any

import torch

from clt_bench.activations.extract import extract_activations
from clt_bench.activations.tokens import TokenRows
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.clt.replacement import agreement_metrics, replacement_hooks
from clt_bench.config import RunConfig
from clt_bench.models import LoadedModel

PER_PROMPT = "_per_prompt"  # key of the per-example tensors in task_metrics_with_clt's result


@torch.no_grad()
def reconstruction_metrics(clt: CrossLayerTranscoder, x: torch.Tensor, y: torch.Tensor,
                           batch: int = 2048) -> dict[str, Any]:
    """x, y [n, L, d] raw held-out activations -> NMSE, L0 and dead fraction (overall + per layer).

    nmse = sum ||ŷ - y||² / sum ||y - ȳ||² pooled over layers (ȳ: per-layer mean over tokens);
    l0 = active features per token summed over layers; dead = never active on these n tokens.
    """
    device = clt.W_enc.device
    L, F = clt.n_layers, clt.spec.n_features
    err = torch.zeros(L, dtype=torch.float64)
    active = torch.zeros(L, dtype=torch.float64)
    ever = torch.zeros(L, F, dtype=torch.bool, device=device)
    for i in range(0, x.shape[0], batch):
        xb, yb = x[i : i + batch].to(device, clt.W_enc.dtype), y[i : i + batch].to(device)
        y_hat, acts = clt(xb)
        err += (y_hat.double() - yb.double()).pow(2).sum(dim=(0, 2)).cpu()
        fired = acts > 0
        active += fired.sum(dim=(0, 2)).double().cpu()
        ever |= fired.any(0)
    y64 = y.double()
    var = (y64 - y64.mean(0)).pow(2).sum(dim=(0, 2))  # [L]
    n = x.shape[0]
    per_layer = (err / var.clamp_min(1e-30)).tolist()
    l0_layer = (active / n).tolist()
    return {
        "nmse": float(err.sum() / var.sum()),
        "nmse_per_layer": per_layer,
        "nmse_mean_over_layers": sum(per_layer) / L,
        "explained_variance": 1 - float(err.sum() / var.sum()),
        "l0": sum(l0_layer),
        "l0_per_layer": l0_layer,
        "dead_fraction": float((~ever).double().mean()),
        "dead_fraction_per_layer": (~ever).double().mean(1).tolist(),
        "eval_tokens_reconstruction": n,
    }


def heldout_activations(loaded: LoadedModel, rows: TokenRows, n_tokens: int, batch_rows: int
                        ) -> tuple[torch.Tensor, torch.Tensor, TokenRows]:
    """Activations of the first rows of ``rows`` holding about ``n_tokens`` tokens."""
    xs, ys, seen, end = [], [], 0, 0
    while end < rows.tokens.shape[0] and seen < n_tokens:
        part = TokenRows(rows.tokens[end : end + batch_rows], rows.mask[end : end + batch_rows])
        x, y = extract_activations(loaded.bridge, part)
        xs.append(x.cpu())
        ys.append(y.cpu())
        seen += part.n_tokens
        end += batch_rows
    used = TokenRows(rows.tokens[:end], rows.mask[:end])
    return torch.cat(xs), torch.cat(ys), used


def task_metrics_with_clt(cfg: RunConfig, loaded: LoadedModel, clt: CrossLayerTranscoder
                          ) -> dict[str, float]:
    """Greater-than PD of the original and of the replacement model on the task dataset."""
    from clt_bench.task.evaluate import end_logits, task_metrics
    from clt_bench.task.metrics import answer_probs, prob_diff_per_example
    from clt_bench.task.stage import load_task_batch

    batch = load_task_batch(cfg, loaded)
    bs = min(cfg.task.batch_size, 64)
    logits_o = end_logits(loaded.bridge, batch.clean, batch.end_pos, bs)
    logits_r = end_logits(loaded.bridge, batch.clean, batch.end_pos, bs,
                          fwd_hooks=replacement_hooks(clt))
    orig, rep = task_metrics(logits_o, batch), task_metrics(logits_r, batch)
    pd_o, pd_r = orig["prob_diff"], rep["prob_diff"]
    per_prompt = {f"{name}_prob_diff": prob_diff_per_example(
        answer_probs(logits, batch.answer_ids), batch.yy, batch.relation)
        for name, logits in (("model", logits_o), ("replacement", logits_r))}
    return {
        "model_prob_diff": pd_o,
        "replacement_prob_diff": pd_r,
        "replacement_prob_diff_ratio": pd_r / pd_o if pd_o else float("nan"),
        "replacement_cutoff_sharpness": rep["cutoff_sharpness"],
        "task_examples": len(batch),
        PER_PROMPT: per_prompt,  # [n] tensors; the stage saves them as safetensors
    }


def evaluate_clt(cfg: RunConfig, loaded: LoadedModel, clt: CrossLayerTranscoder,
                 rows: TokenRows) -> dict[str, Any]:
    """All quality metrics: reconstruction, L0 and dead fraction on all held-out tokens; the
    replacement model on the first ``clt.eval_tokens`` of them; the task's discovery set."""
    x, y, _ = heldout_activations(loaded, rows, rows.n_tokens, cfg.activations.batch_size)
    out = reconstruction_metrics(clt, x, y)
    n_rows = int((rows.mask.sum(1).cumsum(0) < cfg.clt.eval_tokens).sum()) + 1
    part = TokenRows(rows.tokens[:n_rows], rows.mask[:n_rows])
    out.update(agreement_metrics(loaded.bridge, clt, part, batch_size=8))
    out.update(task_metrics_with_clt(cfg, loaded, clt))
    return out
