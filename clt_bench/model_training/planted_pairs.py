"""(base, source) prompt pairs and the high-level model's output for the planted model.

A pair shares the template, noun and century XX and differs in the start year's digits YY (the
only input the high-level model reads besides XX). The high-level output is the synthetic corpus's
law of the end year: ``p(ZZ | XX, YY)`` (``clt_bench.model_training.synthetic_corpus``: ZZ = YY +
gap, the gap geometric with probability GAP_GEOMETRIC_FRACTION, else uniform, and XXZZ a year the
corpus uses), so the targets are exact, not estimated from samples.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from clt_bench.model_training.synthetic_corpus import GAP_GEOMETRIC_FRACTION, GAP_P, year_tables
from clt_bench.models.tokenizer import gpt2_tokenizer
from clt_bench.task.dataset import TaskBatch, answer_token_ids, build_dataset
from clt_bench.task.spec import load_task

CORRUPT_YY = 1  # Hanna's "01" counterfactual


@functools.lru_cache(maxsize=1)
def hl_table() -> torch.Tensor:
    """[100 centuries, 100 YY, 100 ZZ]: the corpus's p(ZZ | XX, YY); rows without a law are 0."""
    t = year_tables()
    out = torch.zeros(100, 100, 100, dtype=torch.float64)
    for year in t.years:
        c, yy = divmod(year, 100)
        room = 99 - yy
        if room < 1:
            continue
        g = torch.arange(1, room + 1, dtype=torch.float64)
        geo = GAP_P * (1 - GAP_P) ** (g - 1)
        p = GAP_GEOMETRIC_FRACTION * geo / geo.sum() + (1 - GAP_GEOMETRIC_FRACTION) / room
        valid = torch.tensor([(c * 100 + yy + int(k)) in t.year_set for k in g.tolist()])
        p = p * valid
        if p.sum() > 0:
            out[c, yy, yy + 1 :] = p / p.sum()
    return out.float()


def hl_output(century: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """High-level output for [n] centuries and YY: [n, 100] probabilities over ZZ."""
    return hl_table()[century, yy]


@functools.lru_cache(maxsize=1)
def source_yy_by_century() -> dict[int, tuple[int, ...]]:
    """YY values a source prompt may take in each century (years the corpus uses, with a law)."""
    t = year_tables()
    law = hl_table().sum(-1) > 0  # [century, yy]
    out: dict[int, list[int]] = {}
    for year in t.years:
        c, yy = divmod(year, 100)
        if law[c, yy]:
            out.setdefault(c, []).append(yy)
    return {c: tuple(v) for c, v in out.items()}


@dataclass
class Pairs:
    """Base and source prompts of one template: tokens [n, pos] that differ only at ``yy_pos``."""

    base: torch.Tensor
    source: torch.Tensor
    century: torch.Tensor  # [n]
    base_yy: torch.Tensor  # [n]
    source_yy: torch.Tensor  # [n]
    yy_pos: int
    end_pos: int
    answer_ids: torch.Tensor  # [100]

    def __len__(self) -> int:
        return int(self.base.shape[0])


@functools.lru_cache(maxsize=4)
def prompt_pool(n: int, seed: int) -> TaskBatch:
    """``n`` task prompts (Hanna's template, YY balanced over 2..98) drawn with ``seed``."""
    return build_dataset(load_task("greater_than"), gpt2_tokenizer(), "discovery", "hanna", n, seed)


def make_pairs(
    pool: TaskBatch,
    idx: torch.Tensor,
    gen: torch.Generator,
    corrupt_fraction: float = 0.25,
    corrupt_base_fraction: float = 0.0,
) -> Pairs:
    """Pairs with bases ``pool[idx]`` and sources that swap YY for another YY of the same century.

    A ``corrupt_fraction`` of the sources use YY = 01 (Hanna's counterfactual) where the century
    has it, so the interventions the baseline's path patching makes were trained for; of those,
    a ``corrupt_base_fraction`` swap roles (the 01 prompt is the base), so the corrupted run's
    own output is trained too (01 is rare in the corpus).
    """
    base = pool.clean[idx]
    century = torch.tensor([pool.years[i] // 100 for i in idx.tolist()])
    base_yy = pool.yy[idx]
    choices = source_yy_by_century()
    src_yy = []
    for c, byy in zip(century.tolist(), base_yy.tolist(), strict=True):
        options = [y for y in choices[c] if y != byy]
        if CORRUPT_YY in options and float(torch.rand((), generator=gen)) < corrupt_fraction:
            src_yy.append(CORRUPT_YY)
        else:
            src_yy.append(options[int(torch.randint(len(options), (), generator=gen))])
    source_yy = torch.tensor(src_yy)
    answer_ids = answer_token_ids(gpt2_tokenizer())
    source = base.clone()
    source[:, pool.yy_pos] = answer_ids[source_yy]
    if corrupt_base_fraction > 0:
        flip = (source_yy == CORRUPT_YY) & (
            torch.rand(len(source_yy), generator=gen) < corrupt_base_fraction
        )
        base, source = (
            torch.where(flip[:, None], source, base),
            torch.where(flip[:, None], base, source),
        )
        base_yy, source_yy = (
            torch.where(flip, source_yy, base_yy),
            torch.where(flip, base_yy, source_yy),
        )
    return Pairs(base, source, century, base_yy, source_yy, pool.yy_pos, pool.end_pos, answer_ids)
