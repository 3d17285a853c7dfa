"""Run a model on a task batch and read the END-position logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.task.dataset import TaskBatch
from clt_bench.task.metrics import answer_probs, logit_diff_per_example, summarize


def end_only_hook(end_pos: int) -> tuple[str, Callable[..., torch.Tensor]]:
    """Unembed only END: ``unembed.hook_in`` [b, pos, d] -> [b, 1, d] (vocab matmul is costly).

    Contiguous: on a strided slice the unembedding runs as b matrix-vector products, each reading
    the whole [d, vocab] matrix (6x slower on the toy's 50,257-token vocabulary).
    """
    return ("unembed.hook_in", lambda x, hook: x[:, end_pos : end_pos + 1].contiguous())


@torch.no_grad()
def end_logits(
    bridge: TransformerBridge,
    tokens: torch.Tensor,
    end_pos: int,
    batch_size: int = 128,
    fwd_hooks: Sequence[tuple] = (),
    compact_ids: torch.Tensor | None = None,
    end_only: bool = False,
) -> torch.Tensor:
    """[n, pos] tokens -> [n, vocab] logits at ``end_pos`` (optionally with forward hooks).

    With ``compact_ids`` [k] it returns [n, k + 1] instead: the logits of those tokens and, last,
    the logsumexp of every other token — a softmax over it equals the full-vocabulary softmax at
    those tokens, without holding n x vocab logits (the 10,000-example set needs this).
    ``end_only``: unembed only ``end_pos`` (``end_only_hook``), several times
    faster on a large vocabulary; float32 rounding of the logits differs from the full unembed's
    by ~1e-7 relative (a different matmul shape).
    """
    device = next(bridge.parameters()).device
    hooks = [*fwd_hooks, end_only_hook(end_pos)] if end_only else list(fwd_hooks)
    pos = -1 if end_only else end_pos
    outs = []
    for i in range(0, tokens.shape[0], batch_size):
        chunk = tokens[i : i + batch_size].to(device)
        logits = bridge.run_with_hooks(chunk, fwd_hooks=hooks) if hooks else bridge(chunk)
        last = logits[:, pos].float()
        if compact_ids is not None:
            last = compact_logits(last, compact_ids.to(last.device))
        outs.append(last.cpu())
    return torch.cat(outs)


def compact_logits(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[n, vocab] -> [n, k + 1]: logits of ``ids`` then the logsumexp of all other tokens."""
    rest = logits.clone()
    rest[:, ids] = float("-inf")
    return torch.cat([logits[:, ids], rest.logsumexp(-1, keepdim=True)], dim=-1)


def task_metrics(
    logits_end: torch.Tensor,
    batch: TaskBatch,
    prefix: str = "",
    answer_ids: torch.Tensor | None = None,
) -> dict[str, float]:
    """PD, CS and logit difference (sum and mean variants) of END logits for ``batch``.

    ``answer_ids`` overrides ``batch.answer_ids`` (e.g. ``arange(100)`` for compact logits).
    """
    ids = batch.answer_ids if answer_ids is None else answer_ids
    p = answer_probs(logits_end, ids)
    answer = batch.answer if batch.relation == "exact" else None
    out = summarize(p, batch.yy, batch.relation, answer)
    ans = logits_end[:, ids].double()
    for key, reduce in (("logit_diff", "sum"), ("logit_diff_mean_variant", "mean")):
        ld = logit_diff_per_example(ans, batch.yy, batch.relation, reduce, answer)
        out[key] = float(ld.mean())
    out["answer_mass"] = float(p.sum(-1).mean())
    return {f"{prefix}{k}": v for k, v in out.items()}


def clean_and_corrupted(
    bridge: TransformerBridge, batch: TaskBatch, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Compact END logits [n, A + 1] (``end_only``) of ``batch``'s clean and corrupted prompts,
    and their ``task_metrics`` (the corrupted run's keys prefixed ``corrupted_``)."""
    ids, end = batch.answer_ids, batch.end_pos
    clean = end_logits(bridge, batch.clean, end, batch_size, compact_ids=ids, end_only=True)
    corrupt = end_logits(bridge, batch.corrupted, end, batch_size, compact_ids=ids, end_only=True)
    compact = torch.arange(len(ids))  # columns of the compact logits
    metrics = task_metrics(clean, batch, answer_ids=compact)
    metrics.update(task_metrics(corrupt, batch, prefix="corrupted_", answer_ids=compact))
    return clean, corrupt, metrics
