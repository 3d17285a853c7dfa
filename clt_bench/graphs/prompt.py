"""The run's graph prompt and its ``task`` target: ``graphs.prompt`` when set, else the one the
task file's ``[graph]`` table names, built exactly as the task's prompts are (docs/methods.md,
"Graph prompt"). The ``task`` target takes the template's relation, the prompt's YY and
(``exact``) its answer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from clt_bench.errors import UserError
from clt_bench.graphs.build import prompt_tokens
from clt_bench.graphs.targets import TaskTarget
from clt_bench.task.dataset import (
    build_batch,
    exact_answer,
    sequence_years,
    spec_years,
    template_nouns,
)
from clt_bench.task.spec import TaskSpec, Template


@dataclass(frozen=True)
class GraphPrompt:
    tokens: torch.Tensor  # [pos]
    text: str  # the prompt as built (BOS text included when it has one)
    source: str  # where it came from, in words
    template: str  # the task template whose relation the target uses
    target: TaskTarget
    yy_pos: int  # position of the YY token (-1: found from the text later)


def _text_prompt(
    text: str, source: str, spec: TaskSpec, tpl: Template, tok: PreTrainedTokenizerBase, bos: bool
) -> GraphPrompt:
    tokens, shown = prompt_tokens(tok, text, bos)
    years = re.findall(r"(?<!\d)(\d{4})(?!\d)", text)  # the last four-digit year is the YY's
    year = int(years[-1]) if years else None  # only the task target needs one (it says so)
    target = TaskTarget(
        relation=tpl.relation,
        yy=None if year is None else year % 100,
        answer=exact_answer(tpl, year) if year is not None else -1,
        n_answers=spec.n_answers,
    )
    return GraphPrompt(tokens, shown, source, tpl.name, target, -1)


def task_graph_prompt(
    spec: TaskSpec, tok: PreTrainedTokenizerBase, override: str = "", prepend_bos: bool = True
) -> GraphPrompt:
    """The graph prompt of a run: ``override`` (``graphs.prompt``) when non-empty, else the task
    file's ``[graph]`` prompt or example (module docstring)."""
    tpl = spec.template(spec.graph_template or spec.default_template)
    if override.strip():
        return _text_prompt(override, "graphs.prompt", spec, tpl, tok, prepend_bos)
    if spec.graph_prompt:
        return _text_prompt(
            spec.graph_prompt, f"graph.prompt of {spec.path}", spec, tpl, tok, prepend_bos
        )
    years = spec_years(spec, tok, tpl)
    year = spec.graph_year or years[len(years) // 2]
    if year not in years:
        raise UserError(
            f"task file {spec.path}: graph.year = {year} is not a valid start year of template "
            f"'{tpl.name}' for this tokenizer."
        )
    noun = spec.graph_noun or template_nouns(spec, tok, tpl)[0]
    if len(tok.encode(f" {noun}")) != 1:  # any noun of one token, as the task's nouns are
        raise UserError(
            f"task file {spec.path}: graph.noun = {noun!r} is not one token after a space."
        )
    pool = spec_years(spec, tok, tpl) if tpl.sequence == "random_same_century" else None
    prev = sequence_years(tpl, year, random.Random(year), pool)
    b = build_batch(spec, tok, tpl, [year], [noun], prev=[prev])
    target = TaskTarget(tpl.relation, int(b.yy[0]), int(b.answer[0]), spec.n_answers)
    source = f"the task's example: template '{tpl.name}', noun {noun!r}, year {year}"
    return GraphPrompt(b.clean[0], b.prompts[0], source, tpl.name, target, b.yy_pos)
