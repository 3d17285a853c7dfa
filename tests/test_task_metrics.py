"""Metrics against hand-computed values on small synthetic probability tables."""

from __future__ import annotations

import math

import torch

from clt_bench.task.metrics import (
    answer_probs,
    cutoff_sharpness_per_example,
    logit_diff_per_example,
    prob_diff_per_example,
    summarize,
    yy_heatmap,
)


def _table(pairs: dict[int, float]) -> torch.Tensor:
    p = torch.zeros(1, 100, dtype=torch.float64)
    for z, v in pairs.items():
        p[0, z] = v
    return p


def test_prob_diff_hand_values():
    p = _table({10: 0.2, 30: 0.1, 31: 0.3, 90: 0.1})  # mass 0.7, not renormalised
    yy = torch.tensor([30])
    # correct: z > 30 -> 0.3 + 0.1 = 0.4 ; other: 0.2 + 0.1 = 0.3
    assert math.isclose(float(prob_diff_per_example(p, yy)), 0.1, abs_tol=1e-12)
    # lt relation: correct z < 30 -> 0.2 ; other: z >= 30 -> 0.5
    assert math.isclose(float(prob_diff_per_example(p, yy, "lt")), -0.3, abs_tol=1e-12)


def test_cutoff_sharpness_hand_values():
    p = _table({29: 0.05, 31: 0.25})
    yy = torch.tensor([30])
    assert math.isclose(float(cutoff_sharpness_per_example(p, yy)), 0.20, abs_tol=1e-12)
    assert math.isclose(float(cutoff_sharpness_per_example(p, yy, "lt")), -0.20, abs_tol=1e-12)


def test_logit_diff_sum_and_mean():
    logits = torch.zeros(1, 100, dtype=torch.float64)
    logits[0, 50:] = 1.0  # 50 logits of 1 above, 50 of 0 below
    yy = torch.tensor([49])  # correct: 50..99 (50 tokens); other: 0..49 (50 tokens)
    assert float(logit_diff_per_example(logits, yy)) == 50.0
    assert float(logit_diff_per_example(logits, yy, reduce="mean")) == 1.0


def test_answer_probs_full_vocab_not_renormalised():
    logits = torch.zeros(2, 1000)
    ids = torch.arange(100)
    p = answer_probs(logits, ids)
    assert torch.allclose(p, torch.full((2, 100), 1 / 1000, dtype=torch.float64))
    assert math.isclose(float(p.sum(-1)[0]), 0.1, rel_tol=1e-9)


def test_heatmap_rows_and_summary():
    p = torch.zeros(3, 100, dtype=torch.float64)
    p[0, 60] = 1.0
    p[1, 70] = 1.0
    p[2, 1] = 1.0
    yy = torch.tensor([50, 50, 2])
    heat = yy_heatmap(p, yy)
    assert heat.shape == (97, 100)
    assert heat[48, 60] == 0.5 and heat[48, 70] == 0.5  # row index 48 <-> YY = 50
    assert heat[0, 1] == 1.0
    assert torch.isnan(heat[1]).all()
    s = summarize(p, yy)
    assert math.isclose(s["prob_diff"], (1 + 1 - 1) / 3)


def test_compact_logits_give_the_full_vocab_probabilities():
    from clt_bench.task.end_logits import compact_logits

    torch.manual_seed(0)
    logits = torch.randn(4, 500) * 3
    ids = torch.tensor([7, 3, 99, 250])
    compact = compact_logits(logits, ids)
    assert compact.shape == (4, 5)
    full = answer_probs(logits, ids)
    small = answer_probs(compact, torch.arange(4))
    assert torch.allclose(full, small, atol=1e-6)
