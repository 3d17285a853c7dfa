"""What a patched forward leaves behind: END answer logits and the full-vocab log-normaliser.

Keeping only ``[.., A]`` answer logits and ``[..]`` logsumexp (instead of ``[.., vocab]``) makes
thousands of patched runs cheap to hold while the task metrics stay exact (full-vocab softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clt_bench.task.dataset import TaskBatch
from clt_bench.task.metrics import summarize


@dataclass
class EndReadout:
    """``answer_logits`` [..., A] (the task's A answers) and ``lse`` [...] (logsumexp over the
    full vocab), float64."""

    answer_logits: torch.Tensor
    lse: torch.Tensor

    @property
    def probs(self) -> torch.Tensor:
        """p_z over the full vocabulary, restricted to the answers: [..., A]."""
        return torch.exp(self.answer_logits - self.lse[..., None])

    def __getitem__(self, idx: int | slice | torch.Tensor) -> EndReadout:
        return EndReadout(self.answer_logits[idx], self.lse[idx])

    def reshape(self, *shape: int) -> EndReadout:
        return EndReadout(self.answer_logits.reshape(*shape, -1), self.lse.reshape(*shape))

    @staticmethod
    def cat(parts: list[EndReadout], dim: int = 0) -> EndReadout:
        return EndReadout(
            torch.cat([p.answer_logits for p in parts], dim), torch.cat([p.lse for p in parts], dim)
        )


def readout_from_logits(logits: torch.Tensor, answer_ids: torch.Tensor) -> EndReadout:
    """[rows, vocab] END logits -> readout (logsumexp in the logits' dtype, then float64: the
    float64 copy of a [rows, vocab] matrix would cost more than the forward pass on CPU)."""
    ans = logits[:, answer_ids.to(logits.device)].double().cpu()
    return EndReadout(ans, torch.logsumexp(logits, -1).double().cpu())


def readout_from_resid(
    x: torch.Tensor,
    w_u: torch.Tensor,
    b_u: torch.Tensor | None,
    answer_ids: torch.Tensor,
    rows: int = 512,
) -> EndReadout:
    """Normalised final residual [total, d_model] -> readout, unembedding ``rows`` at a time."""
    parts = []
    for i in range(0, x.shape[0], rows):
        lg = x[i : i + rows] @ w_u
        if b_u is not None:
            lg = lg + b_u
        parts.append(readout_from_logits(lg, answer_ids))
    return EndReadout.cat(parts)


def metrics_of(readout: EndReadout, batch: TaskBatch) -> dict[str, float]:
    """PD, CS (with spreads over examples) and logit difference of a readout over the [n]
    prompts of ``batch`` (its relation and, for ``exact``, its answers)."""
    out = summarize(readout.probs, batch.yy, batch.relation, batch.exact_answers())
    out["logit_diff"] = float(batch.logit_diff(readout.answer_logits).mean())
    return out


def per_example_pd(readout: EndReadout, batch: TaskBatch) -> torch.Tensor:
    """[..., n] probability difference per prompt of ``batch`` (leading dims kept)."""
    return batch.prob_diff(readout.probs)
