"""Run a model on a task batch and read the END-position logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.task.dataset import TaskBatch
from clt_bench.task.metrics import answer_probs, logit_diff_per_example, summarize


@torch.no_grad()
def end_logits(
    bridge: TransformerBridge,
    tokens: torch.Tensor,
    end_pos: int,
    batch_size: int = 128,
    fwd_hooks: Sequence[tuple] = (),
) -> torch.Tensor:
    """[n, pos] tokens -> [n, vocab] logits at ``end_pos`` (optionally with forward hooks)."""
    device = next(bridge.parameters()).device
    outs = []
    for i in range(0, tokens.shape[0], batch_size):
        chunk = tokens[i : i + batch_size].to(device)
        if fwd_hooks:
            logits = bridge.run_with_hooks(chunk, fwd_hooks=list(fwd_hooks))
        else:
            logits = bridge(chunk)
        outs.append(logits[:, end_pos].float().cpu())
    return torch.cat(outs)


def task_metrics(logits_end: torch.Tensor, batch: TaskBatch, prefix: str = "") -> dict[str, float]:
    """PD, CS and logit difference (sum and mean variants) of END logits for ``batch``."""
    p = answer_probs(logits_end, batch.answer_ids)
    out = summarize(p, batch.yy, batch.relation)
    ans = logits_end[:, batch.answer_ids].double()
    out["logit_diff"] = float(logit_diff_per_example(ans, batch.yy, batch.relation).mean())
    out["logit_diff_mean_variant"] = float(
        logit_diff_per_example(ans, batch.yy, batch.relation, reduce="mean").mean()
    )
    out["answer_mass"] = float(p.sum(-1).mean())
    return {f"{prefix}{k}": v for k, v in out.items()}
