"""Quality metrics of a trained CLT on held-out text (docs/methods.md#clt)."""

from __future__ import annotations

from typing import Any

import torch

from clt_bench.activations.extract import extract_activations
from clt_bench.activations.tokens import TokenRows
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.clt.replacement_hooks import agreement_metrics, mlps_skipped, replacement_hooks
from clt_bench.config import RunConfig
from clt_bench.models import LoadedModel

PER_PROMPT = "_per_prompt"  # key of the per-example tensors in task_metrics_with_clt's result


@torch.no_grad()
def reconstruction_metrics(
    clt: CrossLayerTranscoder,
    x: torch.Tensor,
    y: torch.Tensor,
    first: torch.Tensor | None = None,
    exclude_bos: bool = False,
    batch: int = 2048,
) -> dict[str, Any]:
    """x, y [n, L, d] raw held-out activations -> NMSE, L0 and dead fraction (overall + per layer).

    nmse = sum ||ŷ - y||² / sum ||y - ȳ||² pooled over layers (ȳ: per-layer mean over tokens);
    l0 = active features per token summed over layers; dead = never active on these N tokens
    (``dead_fraction_tokens``; a feature firing on a fraction p of tokens looks dead with
    probability (1 - p)^N, so "dead" means p below about 3 / N).
    ``first`` [n] bool marks position-0 tokens: NMSE is reported with and without them
    (``nmse_with_position_0`` / ``nmse_without_position_0``); the headline ``nmse``, ``l0`` and
    ``dead_fraction`` use the tokens the CLT was trained on (without position 0 when
    ``exclude_bos``).
    """
    device = clt.W_enc.device
    L, F, n = clt.n_layers, clt.spec.n_features, x.shape[0]
    first = torch.zeros(n, dtype=torch.bool) if first is None else first.bool().cpu()
    # per group (0: position >= 1, 1: position 0): squared error, sum y, sum y^2 per layer
    err = torch.zeros(2, L, dtype=torch.float64)
    s1 = torch.zeros(2, L, y.shape[-1], dtype=torch.float64)
    s2 = torch.zeros(2, L, dtype=torch.float64)
    active = torch.zeros(2, L, dtype=torch.float64)
    ever = torch.zeros(2, L, F, dtype=torch.bool, device=device)
    for i in range(0, n, batch):
        xb = x[i : i + batch].to(device, clt.W_enc.dtype)
        yb = y[i : i + batch].to(device).double()
        y_hat, acts = clt(xb)
        e = (y_hat.double() - yb).pow(2).sum(-1)  # [b, L]
        fired = acts > 0
        g_first = first[i : i + batch].to(device)
        for g, sel in enumerate((~g_first, g_first)):
            if not bool(sel.any()):
                continue
            err[g] += e[sel].sum(0).cpu()
            s1[g] += yb[sel].sum(0).cpu()
            s2[g] += yb[sel].pow(2).sum(dim=(0, 2)).cpu()
            active[g] += fired[sel].sum(dim=(0, 2)).double().cpu()
            ever[g] |= fired[sel].any(0)
    counts = torch.stack([(~first).sum(), first.sum()]).double()  # [2]

    def nmse_of(groups: list[int]) -> tuple[float, list[float]]:
        c = counts[groups].sum()
        if c == 0:
            return float("nan"), [float("nan")] * L
        e = err[groups].sum(0)
        var = s2[groups].sum(0) - s1[groups].sum(0).pow(2).sum(-1) / c  # [L]
        return float(e.sum() / var.sum()), (e / var.clamp_min(1e-30)).tolist()

    scored = [0] if exclude_bos else [0, 1]
    n_scored = int(counts[scored].sum())
    nmse, per_layer = nmse_of(scored)
    l0_layer = (active[scored].sum(0) / max(n_scored, 1)).tolist()
    dead = ~ever[scored].any(0)  # [L, F]
    return {
        "nmse": nmse,
        "nmse_per_layer": per_layer,
        "nmse_mean_over_layers": sum(per_layer) / L,
        "explained_variance": 1 - nmse,
        "nmse_with_position_0": nmse_of([0, 1])[0],
        "nmse_without_position_0": nmse_of([0])[0],
        "l0": sum(l0_layer),
        "l0_per_layer": l0_layer,
        "dead_fraction": float(dead.double().mean()),
        "dead_fraction_per_layer": dead.double().mean(1).tolist(),
        "dead_fraction_tokens": n_scored,
        "scored_positions": "1.." if exclude_bos else "all",
        "eval_tokens_reconstruction": n,
    }


def heldout_activations(
    loaded: LoadedModel, rows: TokenRows, n_tokens: int, batch_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations of the first rows of ``rows`` holding about ``n_tokens`` tokens.

    Returns x, y [n, L, d] (CPU) and first [n] (True at position 0 of a row).
    """
    xs, ys, firsts, seen, end = [], [], [], 0, 0
    while end < rows.tokens.shape[0] and seen < n_tokens:
        part = TokenRows(rows.tokens[end : end + batch_rows], rows.mask[end : end + batch_rows])
        x, y = extract_activations(loaded.bridge, part)
        xs.append(x.cpu())
        ys.append(y.cpu())
        pos = torch.arange(part.mask.shape[1]).expand_as(part.mask)
        firsts.append(pos[part.mask] == 0)
        seen += part.n_tokens
        end += batch_rows
    return torch.cat(xs), torch.cat(ys), torch.cat(firsts)


def task_metrics_with_clt(
    cfg: RunConfig, loaded: LoadedModel, clt: CrossLayerTranscoder
) -> dict[str, float]:
    """The task's PD (its relation, answer count and answers) of the original and of the
    replacement model on the task dataset."""
    from clt_bench.task.end_logits import end_logits, task_metrics
    from clt_bench.task.metrics import answer_probs
    from clt_bench.task.stage import load_task_batch

    batch = load_task_batch(cfg, loaded)
    bs = min(cfg.task.batch_size, 64)
    # END's logits only (``end_only``): the unembedding of the other positions is most of the
    # time of a forward at GPT-2's vocabulary
    logits_o = end_logits(loaded.bridge, batch.clean, batch.end_pos, bs, end_only=True)
    keep_first = cfg.activations.exclude_bos
    with mlps_skipped(loaded.bridge, keep_first):
        logits_r = end_logits(
            loaded.bridge,
            batch.clean,
            batch.end_pos,
            bs,
            fwd_hooks=replacement_hooks(clt, keep_first=keep_first),
            end_only=True,
        )
    orig, rep = task_metrics(logits_o, batch), task_metrics(logits_r, batch)
    pd_o, pd_r = orig["prob_diff"], rep["prob_diff"]
    per_prompt = {
        f"{name}_prob_diff": batch.prob_diff(answer_probs(logits, batch.answer_ids))
        for name, logits in (("model", logits_o), ("replacement", logits_r))
    }
    return {
        "model_prob_diff": pd_o,
        "replacement_prob_diff": pd_r,
        # a ratio to a model PD that is not positive is no share of it (baseline's rule)
        "replacement_prob_diff_ratio": pd_r / pd_o if pd_o > 0 else None,
        "replacement_cutoff_sharpness": rep["cutoff_sharpness"],
        "task_examples": len(batch),
        PER_PROMPT: per_prompt,  # [n] tensors; the stage saves them as safetensors
    }


def evaluate_clt(
    cfg: RunConfig, loaded: LoadedModel, clt: CrossLayerTranscoder, rows: TokenRows
) -> dict[str, Any]:
    """All quality metrics: reconstruction, L0 and dead fraction on all held-out tokens; the
    replacement model on the first ``clt.eval_tokens`` of them; the task's discovery set."""
    skip = cfg.activations.exclude_bos
    x, y, first = heldout_activations(loaded, rows, rows.n_tokens, cfg.activations.batch_size)
    out = reconstruction_metrics(clt, x, y, first, exclude_bos=skip)
    del x, y
    n_rows = int((rows.mask.sum(1).cumsum(0) < cfg.clt.eval_tokens).sum()) + 1
    part = TokenRows(rows.tokens[:n_rows], rows.mask[:n_rows])
    out.update(agreement_metrics(loaded.bridge, clt, part, batch_size=8, keep_first=skip))
    out.update(task_metrics_with_clt(cfg, loaded, clt))
    return out
