"""Clean / corrupted token batches for the greater-than task, for any tokenizer.

Exactly Hanna et al.'s construction: the year filter of ``tasks/greater_than/task.toml``, the 01
corruption, the balanced 490-example discovery set and the uniform 10,000-example set, every draw
seeded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from clt_bench.errors import UserError
from clt_bench.task.spec import TaskSpec, Template


def valid_years(
    tokenizer: PreTrainedTokenizerBase,
    start: int = 1000,
    stop: int = 1900,
    tokens: int = 2,
    suffix_chars: int = 2,
    drop_century_ends: bool = True,
) -> list[int]:
    """Years y in [start, stop) whose ``" " + str(y)`` splits as [" XX", "YY"] (spec §2).

    Per century the first and the last kept year are then dropped.
    """
    kept: list[int] = []
    for y in range(start, stop):
        ids = tokenizer.encode(f" {y}")
        if len(ids) == tokens and len(tokenizer.decode(ids[-1:])) == suffix_chars:
            kept.append(y)
    if not drop_century_ends:
        return kept
    out: list[int] = []
    for century in sorted({y // 100 for y in kept}):
        ys = [y for y in kept if y // 100 == century]
        out.extend(ys[1:-1])
    return out


def spec_years(
    spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, template: Template | None = None
) -> list[int]:
    years = valid_years(
        tokenizer,
        spec.year_start,
        spec.year_stop,
        spec.year_tokens,
        spec.suffix_chars,
        spec.drop_century_ends,
    )
    if template is not None and template.year_range is not None:
        lo, hi = template.year_range
        years = [y for y in years if lo <= y < hi]
    if not years:
        raise UserError("the year filter keeps no years with this tokenizer.")
    return years


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, n: int = 100) -> torch.Tensor:
    """Token ids of "00".."99" (index i <-> f"{i:02d}"); [n]."""
    ids = []
    for i in range(n):
        enc = tokenizer.encode(f"{i:02d}")
        if len(enc) != 1:
            raise UserError(
                f"the tokenizer splits '{i:02d}' into {len(enc)} tokens, so the greater-than task "
                f"cannot run unchanged on this model."
            )
        ids.append(enc[0])
    return torch.tensor(ids, dtype=torch.long)


@dataclass
class TaskBatch:
    """A tokenised dataset. All prompts share one length so the positions are per-dataset."""

    clean: torch.Tensor  # [n, pos]
    corrupted: torch.Tensor  # [n, pos]
    yy: torch.Tensor  # [n] start-year suffix (0..99)
    years: list[int]
    nouns: list[str]
    prompts: list[str]
    yy_pos: int
    end_pos: int
    answer_ids: torch.Tensor  # [100]
    template: str
    relation: str  # gt | lt
    seed: int
    canonical_corrupted: torch.Tensor = field(
        default_factory=lambda: torch.ones(0, dtype=torch.bool)
    )

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def subset(self, idx: list[int] | torch.Tensor) -> TaskBatch:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        il = idx_t.tolist()
        return TaskBatch(
            clean=self.clean[idx_t],
            corrupted=self.corrupted[idx_t],
            yy=self.yy[idx_t],
            years=[self.years[i] for i in il],
            nouns=[self.nouns[i] for i in il],
            prompts=[self.prompts[i] for i in il],
            yy_pos=self.yy_pos,
            end_pos=self.end_pos,
            answer_ids=self.answer_ids,
            template=self.template,
            relation=self.relation,
            seed=self.seed,
            canonical_corrupted=self.canonical_corrupted[idx_t],
        )


def format_prompt(
    template: Template, noun: str, year: int, tokenizer: PreTrainedTokenizerBase
) -> str:
    xx, yy = divmod(year, 100)
    body = template.text.format(noun=noun, XX=f"{xx}", YY=f"{yy:02d}")
    if template.bos:
        bos = tokenizer.bos_token or ""
        return f"{bos} {body}"
    return body


def single_token_nouns(spec: TaskSpec, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    return [n for n in spec.nouns if len(tokenizer.encode(f" {n}")) == 1]


def sample_years(spec_n: int, sampling: str, years: list[int], rng: random.Random) -> list[int]:
    """``balanced``: cycle YY = 2..98 and pick a valid year with that YY; ``uniform``: any year."""
    if sampling == "uniform":
        return [rng.choice(years) for _ in range(spec_n)]
    by_yy: dict[int, list[int]] = {}
    for y in years:
        by_yy.setdefault(y % 100, []).append(y)
    cycle = [yy for yy in range(2, 99) if yy in by_yy]
    return [rng.choice(by_yy[cycle[i % len(cycle)]]) for i in range(spec_n)]


def build_dataset(
    spec: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    dataset: str = "discovery",
    template: str | None = None,
    n: int | None = None,
    seed: int | None = None,
) -> TaskBatch:
    """Build the clean/corrupted batch for ``dataset`` (sizes and seeds from the task spec)."""
    ds = spec.dataset(dataset)
    tpl = spec.template(template or spec.default_template)
    n = n or ds.n
    seed = ds.seed if seed is None or seed < 0 else seed
    rng = random.Random(seed)
    years = spec_years(spec, tokenizer, tpl)
    nouns_ok = single_token_nouns(spec, tokenizer)
    if not nouns_ok:
        raise UserError("no noun of the task is a single token for this tokenizer.")
    chosen = sample_years(n, ds.sampling, years, rng)
    nouns = [rng.choice(nouns_ok) for _ in chosen]
    return build_batch(spec, tokenizer, tpl, chosen, nouns, seed)


def build_batch(
    spec: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    tpl: Template,
    years: list[int],
    nouns: list[str],
    seed: int = 0,
) -> TaskBatch:
    """Tokenise prompts for given (year, noun) pairs; corrupted = YY token replaced by "01"."""
    corrupt_ids = tokenizer.encode(spec.corrupt_yy)
    if len(corrupt_ids) != 1:
        raise UserError(f"the corruption '{spec.corrupt_yy}' is not a single token.")
    corrupt_id = corrupt_ids[0]
    prompts, clean_rows, yy_positions = [], [], []
    canonical = []
    for year, noun in zip(years, nouns, strict=True):
        prompt = format_prompt(tpl, noun, year, tokenizer)
        ids = tokenizer.encode(prompt)
        cut = prompt.index(f"{year}") + 4
        prefix = tokenizer.encode(prompt[:cut])
        if ids[: len(prefix)] != prefix or tokenizer.decode(prefix[-1:]) != f"{year % 100:02d}":
            raise UserError(f"year {year} does not tokenise as [' XX', 'YY'] in '{prompt}'.")
        prompts.append(prompt)
        clean_rows.append(ids)
        yy_positions.append(len(prefix) - 1)
        corrupted_text = prompt[: cut - 2] + spec.corrupt_yy + prompt[cut:]
        canonical.append(len(tokenizer.encode(corrupted_text)) == len(ids))
    lengths = {len(r) for r in clean_rows}
    if len(lengths) != 1 or len(set(yy_positions)) != 1:
        raise UserError("the task prompts do not share one token length with this tokenizer.")
    clean = torch.tensor(clean_rows, dtype=torch.long)
    yy_pos = yy_positions[0]
    corrupted = clean.clone()
    corrupted[:, yy_pos] = corrupt_id
    return TaskBatch(
        clean=clean,
        corrupted=corrupted,
        yy=torch.tensor([y % 100 for y in years], dtype=torch.long),
        years=list(years),
        nouns=list(nouns),
        prompts=prompts,
        yy_pos=yy_pos,
        end_pos=clean.shape[1] - 1,
        answer_ids=answer_token_ids(tokenizer, spec.n_answers),
        template=tpl.name,
        relation=tpl.relation,
        seed=seed,
        canonical_corrupted=torch.tensor(canonical),
    )
