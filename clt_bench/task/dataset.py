"""Clean / corrupted token batches for the greater-than task and its prompt families.

Hanna et al.'s construction: the year filter of ``tasks/greater_than/task.toml``, the 01
corruption (or a family's own counterfactual), the balanced 490-example discovery set and the
uniform 10,000-example set, every draw seeded.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from clt_bench.errors import UserError
from clt_bench.task.metrics import (
    correct_mask,
    logit_diff_coefficients,
    logit_diff_per_example,
    pd_coefficients,
    prob_diff_per_example,
)
from clt_bench.task.spec import TaskSpec, Template

# rows of a batch: all (None), a slice, or indices (a list, array or tensor on any device)
Rows = slice | list[int] | np.ndarray | torch.Tensor | None

_DERIVED = re.compile(r"\{(YY([+-]\d+))\}")
# redraws of a random sequence's other years until the prompt has the batch's token length
MAX_REDRAWS = 200


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


def _century_span(lo: int, hi: int) -> tuple[int, int]:
    return (lo // 100) * 100, math.ceil(hi / 100) * 100


def spec_years(spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, template: Template) -> list[int]:
    """Start years of ``template``: the task's year filter, applied to the template's year_range.

    A year_range outside the task's own range (e.g. 702-798 for the BC family) is filtered by the
    same rule over the whole centuries it touches. Arithmetic families also need every earlier year
    of the sequence to split as [" XX", "YY"] and the answer to stay in the century.
    """
    span = template.year_range
    lo, hi = _century_span(*span) if span else (spec.year_start, spec.year_stop)
    years = valid_years(
        tokenizer, lo, hi, spec.year_tokens, spec.suffix_chars, spec.drop_century_ends
    )
    if span:
        years = [y for y in years if span[0] <= y < span[1]]
    if template.sequence in ("arithmetic", "consecutive"):
        splitting = _splitting_years(
            spec, tokenizer, min(years, default=100) - 100, max(years, default=0)
        )
        years = [
            y
            for y in years
            if y % 100 + arithmetic_step(y, template.step) <= 99
            and all(p in splitting for p in sequence_years(template, y))
        ]
    if template.offsets:  # {YY+k}: the derived years split too
        splitting = _splitting_years(
            spec, tokenizer, min(years, default=100) - 100, max(years, default=0) + 100
        )
        years = [
            y
            for y in years
            if all(0 <= y % 100 + k <= 99 and y + k in splitting for k in template.offsets)
        ]
    if not years:
        raise UserError("the year filter keeps no years with this tokenizer.")
    return _with_answers(spec, template, years)


def _with_answers(spec: TaskSpec, tpl: Template, years: list[int]) -> list[int]:
    """The years whose prompt has a correct and an incorrect answer among the task's answers
    (``answers.count``); none left is bad input naming the key."""
    n = spec.n_answers
    if tpl.relation == "exact":
        kept = [y for y in years if 0 <= exact_answer(tpl, y) < n]
    elif tpl.relation == "gt":
        kept = [y for y in years if y % 100 < n - 1]
    else:  # lt: 00 is correct, and YY itself (below the answer count) is not
        kept = [y for y in years if 1 <= y % 100 <= n - 1]
    if not kept:
        raise UserError(
            f"task file {spec.path}: answers.count = {n} leaves no start year of template "
            f"'{tpl.name}' with a correct answer (an empty answer space)."
        )
    return kept


def _splitting_years(
    spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, lo: int, hi: int
) -> frozenset[int]:
    lo, hi = _century_span(max(lo, 0), hi + 1)
    return frozenset(valid_years(tokenizer, lo, hi, spec.year_tokens, spec.suffix_chars, False))


def arithmetic_step(year: int, step: int = 0) -> int:
    """Hanna et al.'s step for the exact-answer sequence: the smallest i >= 2 not dividing YY
    (``step`` > 0: that fixed step instead, e.g. 1 for consecutive years)."""
    if step:
        return step
    yy, i = year % 100, 2
    while yy % i == 0 and i < 100:  # YY = 00 gives 100: no answer in the century
        i += 1
    return i


def sequence_years(
    tpl: Template, year: int, rng: random.Random | None = None, pool: list[int] | None = None
) -> tuple[int, ...]:
    """The years of slots {prev1}..{prevK} for start year ``year`` (``()`` without a sequence).

    ``arithmetic``: prevK = year - K * step. ``random_same_century``: K draws (with replacement,
    as Hanna's torch.randint) from ``pool`` restricted to the year's century.
    """
    if tpl.sequence in ("arithmetic", "consecutive"):
        step = arithmetic_step(year, tpl.step)
        return tuple(year - k * step for k in range(1, tpl.n_prev + 1))
    if tpl.sequence == "random_same_century":
        if rng is None or pool is None:
            raise ValueError("random_same_century needs an rng and a pool of years")
        same = [y for y in pool if y // 100 == year // 100]
        return tuple(rng.choice(same) for _ in range(tpl.n_prev))
    return ()


def exact_answer(tpl: Template, year: int) -> int:
    """The one correct ZZ of an ``exact`` family (-1 for gt/lt families): YY + k for
    ``answer = "YY+k"``, else the sequence's next term YY + step."""
    if tpl.relation != "exact":
        return -1
    if tpl.answer_offset is not None:
        return year % 100 + tpl.answer_offset
    return year % 100 + arithmetic_step(year, tpl.step)


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, n: int = 100) -> torch.Tensor:
    """Token ids of "00".."99" (index i <-> f"{i:02d}"); [n]."""
    ids = []
    # one batched call: a hundred single encodes cost ~9 ms per attribution graph
    for i, enc in enumerate(tokenizer([f"{i:02d}" for i in range(n)])["input_ids"]):
        if len(enc) != 1:
            raise UserError(
                f"the tokenizer splits '{i:02d}' into {len(enc)} tokens, so the greater-than task "
                f"cannot run unchanged on this model."
            )
        ids.append(enc[0])
    return torch.tensor(ids, dtype=torch.long)


def check_context(batch: TaskBatch, bridge: Any, template: str) -> TaskBatch:
    """A template whose prompts are longer than the model's context is bad input (the model would
    fail with an index error on its position embeddings)."""
    n_ctx = getattr(getattr(bridge, "cfg", None), "n_ctx", None)
    longest = max(batch.clean.shape[-1], batch.corrupted.shape[-1])
    if isinstance(n_ctx, int) and longest > n_ctx:
        raise UserError(
            f"the prompts of template '{template}' are {longest} tokens long, longer than the "
            f"model's context of {n_ctx} tokens."
        )
    return batch


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
    answer_ids: torch.Tensor  # [A]: the task's answers.count answers "00".."A-1"
    template: str
    relation: str  # gt | lt | exact
    seed: int
    canonical_corrupted: torch.Tensor = field(
        default_factory=lambda: torch.ones(0, dtype=torch.bool)
    )
    answer: torch.Tensor = field(  # [n] the one correct ZZ (exact relation), else -1
        default_factory=lambda: torch.zeros(0, dtype=torch.long)
    )

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def n_answers(self) -> int:
        """The task's answer count (``answers.count``): the width of every answer axis."""
        return int(len(self.answer_ids))

    def _rows(self, t: torch.Tensor, idx: Rows) -> torch.Tensor:
        if idx is None:
            return t
        if isinstance(idx, slice):
            return t[idx]
        return t[torch.as_tensor(idx).long().to(t.device)]

    def exact_answers(self, idx: Rows = None) -> torch.Tensor | None:
        """Each prompt's one correct answer (of the prompts ``idx``) for the ``exact`` relation;
        None for ``gt`` / ``lt`` (their correct answers follow from YY)."""
        return self._rows(self.answer, idx) if self.relation == "exact" else None

    def row_answers(self, rows: list[int]) -> list[int] | None:
        """The one correct answer of each heatmap row YY ``rows`` for the ``exact`` relation (a
        function of YY; -1 where no prompt has that YY); None for ``gt`` / ``lt``."""
        if self.relation != "exact":
            return None
        by_yy = dict(zip(self.yy.tolist(), self.answer.tolist(), strict=True))
        return [by_yy.get(y, -1) for y in rows]

    def _scoring(self, idx: Rows, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        ans = self.exact_answers(idx)
        return self._rows(self.yy, idx).to(device), None if ans is None else ans.to(device)

    def correct(self, idx: Rows = None) -> torch.Tensor:
        """[n, A] bool: the answers the task's relation calls correct for each prompt."""
        yy, ans = self._scoring(idx, self.yy.device)
        return correct_mask(yy, self.relation, self.n_answers, ans)

    def prob_diff(self, p: torch.Tensor, idx: Rows = None) -> torch.Tensor:
        """PD per prompt of answer probabilities ``p`` [..., n, A] of the prompts ``idx`` (all
        when None): the task's relation and, for ``exact``, each prompt's answer
        (``task.metrics``); [..., n]."""
        yy, ans = self._scoring(idx, p.device)
        return prob_diff_per_example(p, yy, self.relation, ans)

    def logit_diff(self, answer_logits: torch.Tensor) -> torch.Tensor:
        """Logit difference per prompt of answer logits [..., n, A] (``task.metrics``)."""
        yy, ans = self._scoring(None, answer_logits.device)
        return logit_diff_per_example(answer_logits, yy, self.relation, answer=ans)

    def logit_diff_coefficients(self, idx: Rows = None) -> torch.Tensor:
        """[n, A] float64 c with logit difference = (c * answer_logits).sum(-1)."""
        yy, ans = self._scoring(idx, self.yy.device)
        return logit_diff_coefficients(yy, self.relation, self.n_answers, ans)

    def pd_coefficients(self, p: torch.Tensor, idx: Rows = None) -> torch.Tensor:
        """[..., n, A] c with PD = (c * p).sum(-1) at ``p`` (``task.metrics.pd_coefficients``)."""
        yy, ans = self._scoring(idx, p.device)
        return pd_coefficients(p, yy, self.relation, ans)

    def subset(self, idx: list[int] | torch.Tensor) -> TaskBatch:
        idx_t = torch.as_tensor(idx, dtype=torch.long).cpu()  # the batch's tensors live on the CPU
        il = idx_t.tolist()
        return replace(  # the per-prompt fields cut to ``idx``, the shared ones kept
            self,
            clean=self.clean[idx_t],
            corrupted=self.corrupted[idx_t],
            yy=self.yy[idx_t],
            years=[self.years[i] for i in il],
            nouns=[self.nouns[i] for i in il],
            prompts=[self.prompts[i] for i in il],
            canonical_corrupted=self.canonical_corrupted[idx_t],
            answer=self.answer[idx_t] if len(self.answer) else self.answer,
        )


def _bos(template: Template, tokenizer: PreTrainedTokenizerBase) -> str:
    return f"{tokenizer.bos_token or ''} " if template.bos else ""


def _fill(text: str, noun: str, year: int, prev: tuple[int, ...]) -> str:
    xx, yy = divmod(year, 100)
    slots = {f"prev{k}": str(p) for k, p in enumerate(prev, 1)}
    for m in _DERIVED.finditer(text):  # {YY+k}: two digits, YY + k
        slots[m.group(1)] = f"{yy + int(m.group(2)):02d}"
    return text.format(noun=noun, XX=f"{xx}", YY=f"{yy:02d}", **slots)


def format_prompt(
    template: Template,
    noun: str,
    year: int,
    tokenizer: PreTrainedTokenizerBase,
    prev: tuple[int, ...] = (),
) -> str:
    """The prompt text: BOS text plus a space when ``template.bos``, then the filled template."""
    return _bos(template, tokenizer) + _fill(template.text, noun, year, prev)


@dataclass(frozen=True)
class EncodedPrompt:
    text: str
    ids: list[int]
    yy_pos: int  # position of the start year's YY token
    head: str  # the text up to and including YY


def encode_prompt(
    template: Template,
    noun: str,
    year: int,
    tokenizer: PreTrainedTokenizerBase,
    prev: tuple[int, ...] = (),
) -> EncodedPrompt:
    """Tokenise one prompt and locate its YY token (UserError if the year does not split)."""
    text = format_prompt(template, noun, year, tokenizer, prev)
    head = template.text.split("{XX}{YY}", 1)[0] + "{XX}{YY}"
    prefix_text = _bos(template, tokenizer) + _fill(head, noun, year, prev)
    ids = tokenizer.encode(text)
    prefix = tokenizer.encode(prefix_text)
    if ids[: len(prefix)] != prefix or tokenizer.decode(prefix[-1:]) != f"{year % 100:02d}":
        raise UserError(f"year {year} does not tokenise as [' XX', 'YY'] in '{text}'.")
    return EncodedPrompt(text, ids, len(prefix) - 1, prefix_text)


def template_nouns(
    spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, template: Template | None = None
) -> list[str]:
    """The template's nouns (its own list, else the task's): each one token after a space
    (``check_task_tokens`` rejects a task with any other before a stage runs)."""
    nouns = template.nouns if template is not None and template.nouns else spec.nouns
    return [n for n in nouns if len(tokenizer.encode(f" {n}")) == 1]


def check_task_tokens(spec: TaskSpec, tokenizer: PreTrainedTokenizerBase) -> None:
    """Bad task data that needs the tokenizer: a noun list with nouns that are not one token after
    a space (the prompts would change length), named with how many and which; the answer tokens
    "00".. must each be one token."""
    lists = [("nouns_file", spec.nouns)]
    for name, (kind, tpl) in spec.all_templates().items():
        if tpl.nouns:
            lists.append(
                (f"{'templates' if kind == 'template' else 'families'}.{name}.nouns", tpl.nouns)
            )
    for key, nouns in lists:
        bad = [n for n in nouns if len(tokenizer.encode(f" {n}")) != 1]
        if bad:
            shown = ", ".join(repr(n) for n in bad[:10]) + (", ..." if len(bad) > 10 else "")
            raise UserError(
                f"task file {spec.path}: {key} has {len(bad)} of {len(nouns)} nouns that are not "
                f"one token after a space for this tokenizer ({shown}); remove them."
            )
    answer_token_ids(tokenizer, spec.n_answers)


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
    nouns_ok = template_nouns(spec, tokenizer, tpl)
    if not nouns_ok:
        raise UserError(f"no noun of template '{tpl.name}' is a single token for this tokenizer.")
    chosen = sample_years(n, ds.sampling, years, rng)
    nouns = [rng.choice(nouns_ok) for _ in chosen]
    prev = [sequence_years(tpl, y, rng, years) for y in chosen]
    if tpl.sequence == "random_same_century":
        prev = _redraw_to_one_length(tpl, tokenizer, chosen, nouns, prev, rng, years)
    return build_batch(spec, tokenizer, tpl, chosen, nouns, seed, prev)


def _redraw_to_one_length(
    tpl: Template,
    tokenizer: PreTrainedTokenizerBase,
    years: list[int],
    nouns: list[str],
    prev: list[tuple[int, ...]],
    rng: random.Random,
    pool: list[int],
) -> list[tuple[int, ...]]:
    """Redraw random other years until every prompt has the most common token length.

    Some years split differently at the start of a text (no leading space), which would change the
    prompt's length; those draws are replaced, so all prompts share one length and YY position.
    """

    def shape(y: int, noun: str, pv: tuple[int, ...]) -> tuple[int, int]:
        enc = encode_prompt(tpl, noun, y, tokenizer, pv)
        return len(enc.ids), enc.yy_pos

    shapes = [shape(y, s, p) for y, s, p in zip(years, nouns, prev, strict=True)]
    target = Counter(shapes).most_common(1)[0][0]
    out = list(prev)
    for i, (y, noun) in enumerate(zip(years, nouns, strict=True)):
        tries = 0
        while shapes[i] != target:
            tries += 1
            if tries > MAX_REDRAWS:
                raise UserError(
                    f"template '{tpl.name}': no draw of the other years gives year {y} the "
                    f"batch's token length."
                )
            out[i] = sequence_years(tpl, y, rng, pool)
            shapes[i] = shape(y, noun, out[i])
    return out


def _corrupted_ids(
    tokenizer: PreTrainedTokenizerBase,
    tpl: Template,
    enc: EncodedPrompt,
    noun: str,
    year: int,
    prev: tuple[int, ...],
) -> tuple[list[int], bool]:
    """The counterfactual prompt's ids and whether its text retokenises to them."""
    if tpl.counterfactual_text:
        text = _bos(tpl, tokenizer) + _fill(tpl.counterfactual_text, noun, year, prev)
        return _same_length_ids(tokenizer, tpl, enc, text), True
    cf = tokenizer.encode(tpl.counterfactual)
    if len(cf) != 1:
        raise UserError(f"the corruption '{tpl.counterfactual}' is not a single token.")
    if tpl.offsets:  # {YY+k} slots follow the counterfactual YY: no clean year survives
        return _derived_corrupted(tokenizer, tpl, enc, noun, year, prev), True
    ids = list(enc.ids)
    ids[enc.yy_pos] = cf[0]
    # the token swap is what is run; record whether the swapped text would tokenise the same
    yy_text = f"{year % 100:02d}"
    text = enc.head[: -len(yy_text)] + tpl.counterfactual + enc.text[len(enc.head) :]
    return ids, len(tokenizer.encode(text)) == len(ids)


def _derived_corrupted(
    tokenizer: PreTrainedTokenizerBase,
    tpl: Template,
    enc: EncodedPrompt,
    noun: str,
    year: int,
    prev: tuple[int, ...],
) -> list[int]:
    """The counterfactual of a template with ``{YY+k}`` slots: the whole text filled with the
    counterfactual YY (its derived years too), so the clean YY appears nowhere."""
    cf_yy = int(tpl.counterfactual) if tpl.counterfactual.isdigit() else -1
    bad = [k for k in tpl.offsets if not 0 <= cf_yy + k <= 99]
    if bad or cf_yy < 0:
        raise UserError(
            f"template '{tpl.name}': the counterfactual '{tpl.counterfactual}' gives the slot "
            f"{{YY{bad[0] if bad else 0:+d}}} no two-digit value; set counterfactual (or "
            f"counterfactual_text) on the template."
        )
    text = format_prompt(tpl, noun, (year // 100) * 100 + cf_yy, tokenizer, prev)
    return _same_length_ids(tokenizer, tpl, enc, text)


def _same_length_ids(
    tokenizer: PreTrainedTokenizerBase, tpl: Template, enc: EncodedPrompt, text: str
) -> list[int]:
    """The counterfactual ``text``'s ids; a length other than the clean prompt's is bad input."""
    ids: list[int] = tokenizer.encode(text)
    if len(ids) != len(enc.ids):
        raise UserError(
            f"template '{tpl.name}': the counterfactual '{text}' does not have the clean "
            f"prompt's token length."
        )
    return ids


def build_batch(
    spec: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    tpl: Template,
    years: list[int],
    nouns: list[str],
    seed: int = 0,
    prev: list[tuple[int, ...]] | None = None,
) -> TaskBatch:
    """Tokenise prompts for given (year, noun) pairs and their counterfactuals.

    The counterfactual is the YY token replaced by the template's ``counterfactual`` ("01" for the
    1701 corruption, "99" for 1699 / 1799 / 799 BC), or the template's fixed counterfactual text.
    """
    prev = prev if prev is not None else [sequence_years(tpl, y) for y in years]
    prompts, clean_rows, corrupt_rows, yy_positions, canonical = [], [], [], [], []
    for year, noun, pv in zip(years, nouns, prev, strict=True):
        enc = encode_prompt(tpl, noun, year, tokenizer, pv)
        prompts.append(enc.text)
        clean_rows.append(enc.ids)
        yy_positions.append(enc.yy_pos)
        ids, ok = _corrupted_ids(tokenizer, tpl, enc, noun, year, pv)
        corrupt_rows.append(ids)
        canonical.append(ok)
    lengths = {len(r) for r in clean_rows}
    if len(lengths) != 1 or len(set(yy_positions)) != 1:
        raise UserError(
            f"the prompts of template '{tpl.name}' do not share one token length with this "
            f"tokenizer."
        )
    clean = torch.tensor(clean_rows, dtype=torch.long)
    return TaskBatch(
        clean=clean,
        corrupted=torch.tensor(corrupt_rows, dtype=torch.long),
        yy=torch.tensor([y % 100 for y in years], dtype=torch.long),
        years=list(years),
        nouns=list(nouns),
        prompts=prompts,
        yy_pos=yy_positions[0],
        end_pos=clean.shape[1] - 1,
        answer_ids=answer_token_ids(tokenizer, spec.n_answers),
        template=tpl.name,
        relation=tpl.relation,
        seed=seed,
        canonical_corrupted=torch.tensor(canonical),
        answer=torch.tensor([exact_answer(tpl, y) for y in years], dtype=torch.long),
    )


def one_per_yy(batch: TaskBatch, n_prompts: int) -> TaskBatch:
    """The first prompt of each YY in the batch, for ``n_prompts`` YY values spread over 2..98."""
    values = sorted(set(batch.yy.tolist()))
    if n_prompts <= 0:
        raise UserError("graphs.n_prompts must be positive.")
    if n_prompts < len(values):
        pick = np.linspace(0, len(values) - 1, n_prompts).round().astype(int)
        values = [values[i] for i in sorted(set(pick.tolist()))]
    yy = batch.yy.tolist()
    return batch.subset([yy.index(y) for y in values])  # each value's first prompt
