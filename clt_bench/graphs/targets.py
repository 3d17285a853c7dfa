"""Attribution targets: directions over the vocabulary read at the prompt's last position.

- ``task`` (the default): the task's own relation on the graph prompt: ``gt`` is the greater-than
  target below, ``lt`` the same with the correct answers ZZ < YY, ``exact`` the answer's logit minus
  the mean of the other answers' logits (``relation_coefficients``; zero-sum, shift-invariant).
- ``greater-than``: mean_{z>YY} l_z − mean_{z<=YY} l_z over the task's answer tokens "00".."99"
  (``answers.count`` of them; the mean-difference form, EAP-IG's "mean" logit difference), YY read
  from the last four-digit year in the prompt. Its coefficients (+1/n_gt on the correct answers,
  −1/n_le on the others, 0 off the answers) sum to zero over the answers, hence over the
  vocabulary: adding one constant to every logit, or to the answer logits only, leaves it
  unchanged (``greater_than_coefficients``).
  The features stage ranks features by the same target.
- ``logits``: the most likely next tokens up to 95% cumulative probability, at most 10, weighted
  by their probabilities.
- token strings: each must be one token; equal weights.

``demean`` (``graphs.demean``, on by default for every target) subtracts the direction's mean over
the vocabulary, as circuit-tracer does for logit nodes, so a shift of every logit leaves any target
unchanged; for ``greater-than`` it is a no-op (its direction already has mean zero).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from clt_bench.errors import UserError
from clt_bench.task.dataset import answer_token_ids
from clt_bench.task.metrics import correct_mask
from clt_bench.task.spec import RELATION_NAMES


@dataclass
class Target:
    """One target node: ``value = direction @ logits[last]``."""

    label: str
    direction: torch.Tensor  # [V]
    weight: float  # for influence (targets' weights sum to 1)
    token_id: int | None = None  # the token of a single-logit target
    prob: float = 0.0  # its probability in the clean run

    def key(self, vocab_size: int, index: int) -> int:
        """Vocabulary index for the graph file (virtual index vocab_size + i for directions)."""
        return self.token_id if self.token_id is not None else vocab_size + index


def parse_yy(prompt: str) -> int:
    """YY of the last four-digit year in ``prompt`` ("... year 1711 to the year 17" -> 11)."""
    years = re.findall(r"(?<!\d)(\d{4})(?!\d)", prompt)
    if not years:
        raise UserError("the task target needs a four-digit year (e.g. 1711) in the prompt.")
    return int(years[-1]) % 100


def greater_than_coefficients(
    yy: torch.Tensor | int,
    relation: str = "gt",
    n: int = 100,
    answer: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """[n_prompts, n] (or [n] for an int ``yy``) shift-invariant coefficients of the relation.

    ``c_z = +1/n_correct`` for the correct answers (ZZ > YY for ``gt``, ZZ < YY for ``lt``, ZZ =
    ``answer`` for ``exact``) and ``-1/n_other`` for the rest, so ``c @ answer_logits`` = mean
    correct logit − mean other logit and ``c.sum() == 0``: a constant added to every answer logit
    cancels.
    """
    scalar = not isinstance(yy, torch.Tensor)
    yy_t = torch.as_tensor([yy] if scalar else yy, dtype=torch.long).reshape(-1)
    ans = None if answer is None else torch.as_tensor(answer, dtype=torch.long).reshape(-1)
    good = correct_mask(yy_t, relation, n, ans).double()
    n_good, n_bad = good.sum(-1, keepdim=True), (1 - good).sum(-1, keepdim=True)
    if bool((n_good == 0).any() or (n_bad == 0).any()):
        raise UserError(
            f"the {RELATION_NAMES.get(relation, relation)} target is undefined for YY = "
            f"{int(yy_t[0]):02d}: every answer is on one side of it."
        )
    c = good / n_good - (1 - good) / n_bad
    return c[0] if scalar else c


relation_coefficients = greater_than_coefficients


def greater_than_target(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    vocab_size: int,
    relation: str = "gt",
    yy: int | None = None,
    answer: int = -1,
    n_answers: int = 100,
) -> Target:
    """The mean-difference logit difference of the relation for ``prompt``'s YY (zero-sum, see
    top); ``yy`` defaults to the prompt's last four-digit year, ``answer`` is the exact answer."""
    yy = parse_yy(prompt) if yy is None else int(yy)
    ids = answer_token_ids(tokenizer, n_answers)
    direction = torch.zeros(vocab_size, dtype=torch.float64)
    exact = relation == "exact"
    direction[ids] = greater_than_coefficients(yy, relation, len(ids), answer if exact else None)
    what = f"answer={answer:02d}" if exact else f"YY={yy:02d}"
    name = RELATION_NAMES.get(relation, relation)
    return Target(label=f"{name} logit diff ({what})", direction=direction, weight=1.0)


@dataclass(frozen=True)
class TaskTarget:
    """What the ``task`` target needs of the graph prompt: relation, YY, exact answer."""

    relation: str = "gt"
    yy: int | None = None  # None: the prompt's last four-digit year
    answer: int = -1
    n_answers: int = 100


def _token_target(
    label: str, token_id: int, vocab_size: int, weight: float, prob: float = 0.0
) -> Target:
    """A single-logit target: the one-hot direction of ``token_id``."""
    direction = torch.zeros(vocab_size, dtype=torch.float64)
    direction[token_id] = 1.0
    return Target(label, direction, weight, token_id, prob)


def answer_targets(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, n_answers: int = 100
) -> list[Target]:
    """The task's answer-token logits "00".. (``n_answers`` of them) as separate targets (equal
    weights)."""
    ids = answer_token_ids(tokenizer, n_answers).tolist()
    return [_token_target(f"{z:02d}", i, vocab_size, 1.0 / len(ids)) for z, i in enumerate(ids)]


def logit_targets(
    tokenizer: PreTrainedTokenizerBase,
    logits: torch.Tensor,
    cumulative: float = 0.95,
    max_n: int = 10,
) -> list[Target]:
    """Top tokens of ``logits`` [V] until ``cumulative`` probability, at most ``max_n``."""
    probs = torch.softmax(logits.double(), -1)
    p, ids = probs.sort(descending=True)
    n = int((torch.cumsum(p, 0) - p < cumulative).sum())
    n = max(1, min(n, max_n))
    total = float(p[:n].sum())
    return [
        _token_target(str(tokenizer.decode([ti])), ti, logits.shape[-1], pi / total, pi)
        for pi, ti in zip(p[:n].tolist(), ids[:n].tolist(), strict=True)
    ]


def token_targets(
    tokenizer: PreTrainedTokenizerBase,
    strings: Sequence[str],
    vocab_size: int,
    logits: torch.Tensor | None = None,
) -> list[Target]:
    probs = torch.softmax(logits.double(), -1) if logits is not None else None
    out = []
    for s in strings:
        ids = tokenizer.encode(s)
        if len(ids) != 1:
            raise UserError(f"the target '{s}' is {len(ids)} tokens, not one token.")
        prob = float(probs[ids[0]]) if probs is not None else 0.0
        out.append(_token_target(s, ids[0], vocab_size, 1.0 / len(strings), prob))
    return out


def make_targets(
    spec: str | Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    logits: torch.Tensor,
    demean: bool = True,
    cumulative: float = 0.95,
    max_logits: int = 10,
    task: TaskTarget | None = None,
) -> list[Target]:
    """Targets from a CLI/config spec: "task", "greater-than", "logits", "answers" or token
    strings; ``task`` the relation (and YY, answer) of the ``task`` target (default: gt)."""
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items or any(not s for s in items):
        raise UserError("the target spec needs 'task', 'greater-than', 'logits' or token strings.")
    V = int(logits.shape[-1])
    t = task or TaskTarget()
    if items == ["task"]:
        targets = [
            greater_than_target(tokenizer, prompt, V, t.relation, t.yy, t.answer, t.n_answers)
        ]
    elif items == ["greater-than"]:
        targets = [greater_than_target(tokenizer, prompt, V, n_answers=t.n_answers)]
    elif items == ["logits"]:
        targets = logit_targets(tokenizer, logits, cumulative, max_logits)
    elif items == ["answers"]:
        targets = answer_targets(tokenizer, V, t.n_answers)
    else:
        targets = token_targets(tokenizer, items, V, logits)
    if demean:
        for tg in targets:
            tg.direction = tg.direction - tg.direction.mean()
    return targets


def directions(targets: Sequence[Target]) -> torch.Tensor:
    """[n_targets, V] stacked directions."""
    return torch.stack([t.direction for t in targets])
