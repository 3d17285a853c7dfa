"""Greater-than metrics (docs/methods.md#task; Hanna et al. 2023, section 3).

p = softmax over the FULL vocabulary at END, restricted (not renormalised) to the 100 answer tokens.
Relation ``gt``: the correct answers are z > y; ``lt``: z < y. For both,
PD = sum of p over the correct z minus the sum over the other z, and CS = p(y+1) - p(y-1)
(reversed for ``lt``).

Relation ``exact`` (one correct answer a, e.g. the next term of an arithmetic sequence):
PD = p(a) - max over the other 99 answers of p(z), positive exactly when a is the most likely answer
(summing the other 99 would make PD ~ -1 for any model that spreads its mass); CS = p(a) -
(p(a-1) + p(a+1)) / 2, how sharply the mass peaks at a; logit difference = l_a - the mean of
the other answers' logits (one definition for both variants, and the graphs' ``exact`` target: a
sum over the other answers would be dominated by them).

``answers.count`` (n answers "00".."n-1") sets every width: the metrics read it from the shape of
``p`` / the logits, never from ``N_ANSWERS`` (the greater-than task's 100).
"""

from __future__ import annotations

import torch

N_ANSWERS = 100
YY_ROWS = list(range(2, 99))  # heatmap rows YY = 2..98


def answer_probs(end_logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """[n, vocab] logits at END -> [n, A] probabilities of the A answers "00".. (full-vocab
    softmax)."""
    return torch.softmax(end_logits.double(), dim=-1)[:, answer_ids.to(end_logits.device)]


def _need_answer(answer: torch.Tensor | None) -> torch.Tensor:
    if answer is None or (answer < 0).any():
        raise ValueError("relation 'exact' needs each example's answer (0..99)")
    return answer


def correct_mask(
    yy: torch.Tensor,
    relation: str = "gt",
    n: int = N_ANSWERS,
    answer: torch.Tensor | None = None,
) -> torch.Tensor:
    """[n_examples, n] bool: which ZZ are correct for each example's YY (or answer)."""
    z = torch.arange(n, device=yy.device)[None, :]
    if relation == "exact":
        return z == _need_answer(answer).to(yy.device)[:, None]
    y = yy[:, None]
    return z > y if relation == "gt" else z < y


def prob_diff_per_example(
    p: torch.Tensor, yy: torch.Tensor, relation: str = "gt", answer: torch.Tensor | None = None
) -> torch.Tensor:
    """PD_i = sum_{correct z} p_z - sum_{other z} p_z; ``exact``: p_a - max_{z != a} p_z.

    ``p`` [..., n, A] (leading dims kept, e.g. patched runs [S, n, A]) -> [..., n].
    """
    good = correct_mask(yy, relation, p.shape[-1], answer)
    if relation == "exact":
        p_a = (p * good).sum(-1)
        return p_a - p.masked_fill(good, float("-inf")).max(-1).values
    g = good.to(p.dtype)
    return (p * g).sum(-1) - (p * (1 - g)).sum(-1)


def cutoff_sharpness_per_example(
    p: torch.Tensor, yy: torch.Tensor, relation: str = "gt", answer: torch.Tensor | None = None
) -> torch.Tensor:
    """CS_i = p_{y+1} - p_{y-1} (reversed for ``lt``); ``exact``: p_a - (p_{a-1} + p_{a+1}) / 2.

    [n]; needs 1 <= y <= 98 (1 <= a <= 98).
    """
    top = p.shape[1] - 1
    c = _need_answer(answer).to(p.device) if relation == "exact" else yy  # the centre: a or y
    up = p.gather(1, (c + 1).clamp(max=top)[:, None])[:, 0]
    down = p.gather(1, (c - 1).clamp(min=0)[:, None])[:, 0]
    if relation == "exact":
        return p.gather(1, c[:, None])[:, 0] - (up + down) / 2
    return up - down if relation == "gt" else down - up


def logit_diff_per_example(
    answer_logits: torch.Tensor,
    yy: torch.Tensor,
    relation: str = "gt",
    reduce: str = "sum",
    answer: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_{correct} l_z - sum_{other} l_z over the answer logits [..., n, A] ("mean": EAP-IG's
    variant, means instead of sums); ``exact``: l_a - mean_{z != a} l_z whatever ``reduce``
    (module docstring)."""
    good = correct_mask(yy, relation, answer_logits.shape[-1], answer).to(answer_logits.dtype)
    bad = 1 - good
    pos, neg = (answer_logits * good).sum(-1), (answer_logits * bad).sum(-1)
    if reduce == "mean" or relation == "exact":
        return pos / good.sum(-1).clamp(min=1) - neg / bad.sum(-1).clamp(min=1)
    return pos - neg


def logit_diff_coefficients(
    yy: torch.Tensor, relation: str = "gt", n: int = N_ANSWERS, answer: torch.Tensor | None = None
) -> torch.Tensor:
    """[n_examples, n] c with ``logit_diff_per_example = (c * answer_logits).sum(-1)`` (the
    "sum" variant): +1 on the correct answers, -1 on the others; ``exact``: +1 on the answer,
    -1/(n-1) on the others."""
    good = correct_mask(yy, relation, n, answer).double()
    if relation == "exact":
        return good - (1 - good) / max(n - 1, 1)
    return good * 2 - 1


def pd_coefficients(
    p: torch.Tensor, yy: torch.Tensor, relation: str = "gt", answer: torch.Tensor | None = None
) -> torch.Tensor:
    """[..., n, A] c with ``prob_diff_per_example = (c * p).sum(-1)`` at these probabilities:
    +1 on the correct answers, -1 on the others; ``exact``: +1 on the answer, -1 on the most
    likely other answer, 0 elsewhere. PD's gradient with respect to the logits is then
    ``p_v (c_v - PD)`` (c_v = 0 off the answers), exact almost everywhere for ``exact`` too."""
    good = correct_mask(yy, relation, p.shape[-1], answer)
    if relation != "exact":
        return good.to(p.dtype) * 2 - 1
    rival = p.masked_fill(good, float("-inf")).argmax(-1, keepdim=True)
    c = torch.zeros_like(p).masked_fill(good, 1.0)
    return c.scatter(-1, rival, -1.0)


def heatmap_rows(n_answers: int = N_ANSWERS) -> list[int]:
    """The YY rows of a heatmap over ``n_answers`` answers (the task's ``answers.count``): YY =
    2..98 below the answer count."""
    return [y for y in YY_ROWS if y < n_answers]


def yy_heatmap(p: torch.Tensor, yy: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
    """Mean p_z per YY: [97, A] (rows YY = 2..98, columns ZZ = 0..A-1; ``rows``: other YY rows,
    ``heatmap_rows`` of the task's answer count); NaN for absent YY."""
    rows = YY_ROWS if rows is None else rows
    out = torch.full((len(rows), p.shape[1]), float("nan"), dtype=torch.float64)
    for row, y in enumerate(rows):
        sel = yy == y
        if sel.any():
            out[row] = p[sel].double().mean(0)
    return out


def summarize(
    p: torch.Tensor, yy: torch.Tensor, relation: str = "gt", answer: torch.Tensor | None = None
) -> dict[str, float]:
    pd = prob_diff_per_example(p, yy, relation, answer)
    cs = cutoff_sharpness_per_example(p, yy, relation, answer)
    return {
        "prob_diff": float(pd.mean()),
        "prob_diff_std": float(pd.std()) if len(pd) > 1 else 0.0,
        "cutoff_sharpness": float(cs.mean()),
        "cutoff_sharpness_std": float(cs.std()) if len(cs) > 1 else 0.0,
    }
