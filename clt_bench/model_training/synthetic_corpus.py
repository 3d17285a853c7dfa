"""Deterministic synthetic corpus for the toy model (and for CLTs trained on its activations).

``generate_corpus(n, seed)`` returns ``n`` documents. Each starts with GPT-2's BOS text plus a space
(``"<|endoftext|> "``, like Hanna et al.'s prompts) and holds one or more sentences; each
tokenises to at most ``MAX_TOKENS`` (64, the toy's context) GPT-2 tokens. The sentences mix:

- the greater-than task sentence (Hanna's template, all task nouns, every year that splits as
  ``[" XX", "YY"]`` -- century ends such as 1701 included -- and an end year ZZ > YY whose gap is
  skewed toward small values, like real durations);
- the task file's other families: started/ended (ZZ > YY), ended/started (ZZ < YY), ascending and
  descending year sequences, "XXYY is smaller than XXZZ";
- other text with numbers and years: number sequences, prices, ages, counts, "less than" /
  "greater than" statements, dates in prose, births and deaths, and plain sentences without numbers.

Only ``random.Random(seed)`` is used, so the same ``(n, seed)`` gives the same list on any machine.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from clt_bench.errors import UserError
from clt_bench.models.tokenizer import gpt2_tokenizer
from clt_bench.task.dataset import template_nouns, valid_years
from clt_bench.task.spec import load_task

BOS_PREFIX = "<|endoftext|> "
MAX_TOKENS = 64
# share of documents whose first sentence is the task sentence (Hanna's template at its positions)
TASK_FIRST_FRACTION = 0.4
# gap ZZ - YY: with this probability geometric (success prob GAP_P, gap >= 1), else uniform
GAP_GEOMETRIC_FRACTION = 0.8
GAP_P = 0.15

# weights of the sentence kinds after the first slot (and of the first when it is not the task)
KIND_WEIGHTS: dict[str, float] = {
    "lasted": 0.20,
    "started_ended": 0.05,
    "ended_started": 0.03,
    "year_sequence": 0.04,
    "year_sequence_desc": 0.03,
    "year_smaller": 0.03,
    "less_than": 0.06,
    "greater_than": 0.03,
    "number_sequence": 0.05,
    "price": 0.07,
    "age": 0.07,
    "count": 0.07,
    "date": 0.10,
    "born_died": 0.04,
    "plain": 0.13,
}


def _words(text: str, sep: str | None = None) -> list[str]:
    return text.split(sep)


NAMES = _words(
    "Anna John Maria Peter Elena Thomas Sarah David Clara Henry Lucy Paul Emma James Sophie Louis "
    "Alice Victor Grace Oscar"
)
CITIES = _words(
    "Paris London Rome Vienna Madrid Berlin Lisbon Prague Venice Dublin Boston Naples Geneva "
    "Florence Amsterdam Warsaw"
)
MONTHS = _words(
    "January February March April May June July August September October November December"
)
ITEMS = _words(
    "book|coat|lamp|chair|ticket|bottle of wine|loaf of bread|horse|map|watch|pair of shoes|"
    "basket of apples|candle|painting",
    "|",
)
THINGS = _words(
    "ships soldiers students houses trees letters horses books guests boats villages bridges "
    "windows sheep churches"
)
PLACES = _words(
    "harbor village library valley garden castle market school city field museum palace"
)
PLAIN = [
    "The cat sat quietly by the window.",
    "{name} walked to the market in the morning.",
    "The river runs through the old town of {city}.",
    "It rained all day, so the streets were empty.",
    "{name} wrote a long letter to a friend in {city}.",
    "The bells of the church rang at noon.",
    "A small boat drifted slowly across the lake.",
    "The king and the queen returned to the palace.",
    "{name} opened the door and stepped outside.",
    "The garden was full of roses and tall grass.",
    "Nobody knew where the old road led.",
    "The soldiers marched along the river toward {city}.",
    "{name} liked to read by the fire in winter.",
    "The merchants of {city} traded wool and salt.",
    "Snow covered the hills behind the village.",
    "The children played near the bridge until dark.",
]


@dataclass(frozen=True)
class YearTables:
    """Years whose ``" " + str(y)`` splits as ``[" XX", "YY"]``, and the task's nouns."""

    years: tuple[int, ...]
    year_set: frozenset[int]
    nouns: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def year_tables() -> YearTables:
    spec = load_task("greater_than")
    tok = gpt2_tokenizer()
    years = valid_years(
        tok,
        spec.year_start,
        spec.year_stop,
        spec.year_tokens,
        spec.suffix_chars,
        drop_century_ends=False,
    )
    return YearTables(tuple(years), frozenset(years), tuple(template_nouns(spec, tok)))


def sample_gap(rng: random.Random, max_gap: int) -> int:
    """A gap in [1, max_gap]: mostly geometric (small gaps likely), sometimes uniform."""
    if rng.random() < GAP_GEOMETRIC_FRACTION:
        while True:
            g = 1
            while rng.random() > GAP_P:
                g += 1
            if g <= max_gap:
                return g
    return rng.randint(1, max_gap)


def year_pair(
    rng: random.Random, t: YearTables, relation: str = "gt", century: int | None = None
) -> tuple[int, int]:
    """(start, end) in one century, both splitting as [" XX", "YY"]; end > start for ``gt``."""
    pool = t.years if century is None else tuple(y for y in t.years if y // 100 == century)
    for _ in range(1000):
        y = rng.choice(pool)
        yy = y % 100
        room = 99 - yy if relation == "gt" else yy
        if room < 1:
            continue
        gap = sample_gap(rng, room)
        z = y + gap if relation == "gt" else y - gap
        if z in t.year_set:
            return y, z
    raise UserError("could not draw a year pair for the corpus.")


def _noun_years(template: str, relation: str = "gt") -> Callable[[random.Random, YearTables], str]:
    """The task file's families: ``template`` with a year pair (``year_pair``) and a task noun."""

    def make(rng: random.Random, t: YearTables) -> str:
        y, z = year_pair(rng, t, relation)
        return template.format(y=y, z=z, noun=rng.choice(t.nouns))

    return make


def _year_sequence(rng: random.Random, t: YearTables, descending: bool = False) -> str:
    y, z = year_pair(rng, t, "lt" if descending else "gt")
    k = rng.randint(2, 4)
    if descending:
        prev = sorted(rng.sample(range(y + 1, y + 200), k), reverse=True)
    else:
        prev = sorted(rng.sample(range(y - 200, y), k))
    return ", ".join(str(p) for p in [*prev, y, z]) + "."


def _year_smaller(rng: random.Random, t: YearTables) -> str:
    y, z = year_pair(rng, t)
    return f"{y} is smaller than {z}." if rng.random() < 0.5 else f"{z} is larger than {y}."


def _less_than(rng: random.Random, t: YearTables) -> str:
    a, b = sorted(rng.sample(range(0, 100 if rng.random() < 0.7 else 1000), 2))
    return f"{a} is less than {b}."


def _greater_than(rng: random.Random, t: YearTables) -> str:
    a, b = sorted(rng.sample(range(0, 100), 2))
    return f"{b} is greater than {a}."


def _number_sequence(rng: random.Random, t: YearTables) -> str:
    start, step, k = rng.randint(0, 60), rng.choice([1, 2, 3, 5, 10, -1, -2]), rng.randint(4, 7)
    nums = [start + i * step for i in range(k)]
    return ", ".join(str(n) for n in nums if n >= 0) + "."


def _price(rng: random.Random, t: YearTables) -> str:
    item = rng.choice(ITEMS)
    if rng.random() < 0.5:
        return f"The {item} costs ${rng.randint(1, 99)}.{rng.randint(0, 99):02d}."
    return f"In {rng.choice(t.years)} a {item} sold for {rng.randint(2, 500)} shillings."


def _age(rng: random.Random, t: YearTables) -> str:
    name, age = rng.choice(NAMES), rng.randint(1, 99)
    if rng.random() < 0.5:
        return f"{name} was {age} years old."
    return f"At the age of {age}, {name} moved to {rng.choice(CITIES)}."


def _count(rng: random.Random, t: YearTables) -> str:
    return f"There were {rng.randint(2, 99)} {rng.choice(THINGS)} in the {rng.choice(PLACES)}."


def _date(rng: random.Random, t: YearTables) -> str:
    y = rng.choice(t.years)
    r = rng.random()
    if r < 0.35:
        return (
            f"On {rng.randint(1, 28)} {rng.choice(MONTHS)} {y}, the {rng.choice(t.nouns)} "
            f"began in {rng.choice(CITIES)}."
        )
    if r < 0.7:
        return f"In the year {y}, {rng.choice(NAMES)} arrived in {rng.choice(CITIES)}."
    return f"The {rng.choice(t.nouns)} of {y} is still remembered in {rng.choice(CITIES)}."


def _born_died(rng: random.Random, t: YearTables) -> str:
    born = rng.choice(t.years)
    died = born + rng.randint(20, 90)
    return f"{rng.choice(NAMES)} was born in {born} and died in {died}."


def _plain(rng: random.Random, t: YearTables) -> str:
    return rng.choice(PLAIN).format(name=rng.choice(NAMES), city=rng.choice(CITIES))


KINDS: dict[str, Callable[[random.Random, YearTables], str]] = {
    "lasted": _noun_years("The {noun} lasted from the year {y} to the year {z}."),
    "started_ended": _noun_years("The {noun} started in the year {y} and ended in the year {z}."),
    "ended_started": _noun_years(
        "The {noun} ended in the year {y} and started in the year {z}.", "lt"
    ),
    "year_sequence": _year_sequence,
    "year_sequence_desc": lambda rng, t: _year_sequence(rng, t, descending=True),
    "year_smaller": _year_smaller,
    "less_than": _less_than,
    "greater_than": _greater_than,
    "number_sequence": _number_sequence,
    "price": _price,
    "age": _age,
    "count": _count,
    "date": _date,
    "born_died": _born_died,
    "plain": _plain,
}


def sentence(kind: str, rng: random.Random) -> str:
    """One sentence of ``kind`` (a key of ``KINDS``)."""
    if kind not in KINDS:
        raise UserError(f"unknown corpus sentence kind '{kind}' (known: {', '.join(KINDS)}).")
    return KINDS[kind](rng, year_tables())


def _document(rng: random.Random, tok: PreTrainedTokenizerBase) -> str:
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    first = "lasted" if rng.random() < TASK_FIRST_FRACTION else rng.choices(kinds, weights)[0]
    parts = [sentence(first, rng)]
    # token counts straight from the Rust tokenizer: the same ids as ``tok.encode`` (GPT-2 adds
    # no special tokens) without its per-call Python overhead (the corpus is generated on the fly
    # while training starts)
    backend = tok.backend_tokenizer

    def count(text: str) -> int:
        return len(backend.encode(text, add_special_tokens=False).ids)

    used = count(BOS_PREFIX + parts[0])
    target = rng.randint(16, MAX_TOKENS)
    while used < target:
        nxt = sentence(rng.choices(kinds, weights)[0], rng)
        n = count(" " + nxt)
        if used + n > MAX_TOKENS:
            break
        parts.append(nxt)
        used += n
    return BOS_PREFIX + " ".join(parts)


def generate_corpus(n_sequences: int, seed: int) -> list[str]:
    """``n_sequences`` documents (each ``"<|endoftext|> ..."``, <= 64 GPT-2 tokens), seeded."""
    if n_sequences < 0:
        raise UserError(f"the corpus size must be >= 0 (got {n_sequences}).")
    rng = random.Random(seed)
    tok = gpt2_tokenizer()
    return [_document(rng, tok) for _ in range(n_sequences)]


def corpus_settings() -> dict[str, object]:
    """The corpus knobs, for provenance in the toy's config.json."""
    return {
        "generator": "clt_bench.model_training.synthetic_corpus.generate_corpus",
        "bos_prefix": BOS_PREFIX,
        "max_tokens": MAX_TOKENS,
        "task_first_fraction": TASK_FIRST_FRACTION,
        "gap_geometric_fraction": GAP_GEOMETRIC_FRACTION,
        "gap_p": GAP_P,
        "kind_weights": dict(KIND_WEIGHTS),
    }
