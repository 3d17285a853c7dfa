"""Load a task spec (``task.toml`` plus its nouns file) and validate it.

A task is named (``tasks/<name>/task.toml`` of the project) or given as a path: a directory that
holds ``task.toml``, or the ``.toml`` file itself; its nouns files are resolved beside it.

Prompt slots a template may use: ``{noun}``; ``{XX}{YY}`` (the start year, once; its last two digits
are the YY token); ``{XX}`` (the century, last); ``{prev1}``..``{prevK}`` (further years of a
sequence, see ``sequence``); ``{YY+k}`` / ``{YY-k}`` (two digits derived from YY, e.g.
``{XX}{YY+1}``: the next year). Relations: ``gt`` (correct ZZ > YY), ``lt`` (correct ZZ < YY) and
``exact`` (one correct ZZ: ``answer = "YY+k"`` or the sequence rule's next term).

Unknown keys anywhere in the file are bad input (one sentence naming the key and the allowed ones).
"""

from __future__ import annotations

import hashlib
import re
import string
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clt_bench.errors import UserError
from clt_bench.paths import tasks_dir

RELATIONS = ("gt", "lt", "exact")
# each relation in words: its name (titles, target labels) and its correct answers
RELATION_NAMES = {"gt": "greater-than", "lt": "less-than", "exact": "exact-answer"}
RELATION_WORDS = {"gt": "ZZ > YY", "lt": "ZZ < YY", "exact": "ZZ = the answer"}
# how {prev1}..{prevK} are filled:
#   random_same_century: K random valid years of the start year's century (Hanna's variant 9);
#   arithmetic: prevK = year - K * step, step = the smallest integer >= 2 that does not divide YY,
#               and the one correct answer is YY + step (Hanna's exact-answer variant 4).
#   consecutive: prevK = year - K (step 1), the one correct answer is YY + 1;
#   ``step = N`` on a template fixes the arithmetic step instead of Hanna's rule.
SEQUENCES = ("", "random_same_century", "arithmetic", "consecutive")
_PREV = re.compile(r"\{prev(\d+)\}")
_DERIVED = re.compile(r"YY([+-]\d+)")  # a derived-year slot's field name: YY+1, YY-3
_ANSWER = re.compile(r"\s*YY\s*([+-]\s*\d+)?\s*")  # answer = "YY+1"

# the keys each table of task.toml may hold (anything else is bad input)
TOP_KEYS = (
    "name",
    "description",
    "nouns_file",
    "default_template",
    "default_family",
    "year_filter",
    "corruption",
    "answers",
    "datasets",
    "templates",
    "families",
    "graph",
)
YEAR_FILTER_KEYS = ("start", "stop", "tokens", "suffix_chars", "drop_century_ends")
CORRUPTION_KEYS = ("yy",)
ANSWERS_KEYS = ("count", "label", "question_label")
DATASET_KEYS = ("n", "sampling", "seed")
TEMPLATE_KEYS = (
    "text",
    "bos",
    "relation",
    "year_range",
    "source",
    "counterfactual",
    "counterfactual_text",
    "nouns",
    "nouns_file",
    "sequence",
    "step",
    "answer",
    "metric",
)
GRAPH_KEYS = ("prompt", "template", "noun", "year")


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    bos: bool = True
    relation: str = "gt"  # gt: correct ZZ > YY; lt: correct ZZ < YY; exact: ZZ = the answer
    year_range: tuple[int, int] | None = None
    source: str = ""
    counterfactual: str = "01"  # the corrupted prompt's YY token (1701-style corruption)
    counterfactual_text: str = ""  # or a fixed corrupted prompt (may use {noun} and {XX})
    nouns: tuple[str, ...] = ()  # the family's own noun/item list (empty: the task's nouns)
    sequence: str = ""  # how {prevK} slots are filled (SEQUENCES)
    n_prev: int = 0  # number of {prevK} slots
    metric: str = ""  # the PD / CS definition, in words (written to families.csv)
    step: int = 0  # arithmetic sequence step (0: Hanna's rule; consecutive: 1)
    offsets: tuple[int, ...] = ()  # the k of each {YY+k} slot
    answer_offset: int | None = None  # exact relation: the answer is YY + this (answer = "YY+k")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    n: int
    sampling: str  # balanced | uniform
    seed: int


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    nouns: tuple[str, ...]
    year_start: int
    year_stop: int
    year_tokens: int
    suffix_chars: int
    drop_century_ends: bool
    corrupt_yy: str
    n_answers: int
    templates: dict[str, Template]
    families: dict[str, Template]
    datasets: dict[str, DatasetSpec]
    default_template: str
    default_family: str
    path: Path = field(default=Path())
    # the graph prompt: a fixed text (tokenised with graphs.prepend_bos, as graphs.prompt is), or
    # empty for the example of ``graph_template`` (default: the default template) with
    # ``graph_noun`` / ``graph_year`` (defaults: the first usable noun, the middle valid year)
    graph_prompt: str = ""
    graph_template: str = ""
    graph_noun: str = ""
    graph_year: int = 0
    answer_label: str = "answer ZZ"  # the answers' axis name ([answers] label)
    question_label: str = "start YY"  # the start value's axis name ([answers] question_label)

    def template(self, name: str) -> Template:
        every = self.all_templates()  # a template before a family of the same name
        if name not in every:
            raise UserError(f"unknown template '{name}' (known: {', '.join(sorted(every))}).")
        return every[name][1]

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise UserError(
                f"unknown dataset '{name}' (known: {', '.join(sorted(self.datasets))})."
            )
        return self.datasets[name]

    def all_templates(self) -> dict[str, tuple[str, Template]]:
        """Every template and family by name -> (kind, template); kind is template | family."""
        out = {k: ("template", t) for k, t in self.templates.items()}
        out.update({k: ("family", t) for k, t in self.families.items() if k not in out})
        return out


def check_keys(table: Any, allowed: tuple[str, ...], where: str, section: str) -> None:
    """Reject a key of ``table`` that is not in ``allowed``: one sentence naming file, key and the
    allowed keys (as the config does)."""
    if not isinstance(table, dict):
        raise UserError(f"task file {where}: {section or 'the file'} must be a table.")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        name = f"{section}.{unknown[0]}" if section else unknown[0]
        raise UserError(
            f"task file {where} has the unknown key '{name}' (allowed: {', '.join(allowed)})."
        )


def _req(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise UserError(f"task file {where} is missing the key '{key}'.")
    return table[key]


def _read_nouns(path: Path, where: str) -> tuple[str, ...]:
    if not path.is_file():
        raise UserError(f"task file {where} names a nouns file that does not exist ({path}).")
    return tuple(
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )


def default_metric(relation: str) -> str:
    if relation == "exact":
        return (
            "PD = p(answer) - max over the other 99 answers of p(ZZ); "
            "CS = p(answer) - (p(answer-1) + p(answer+1)) / 2"
        )
    cs = "p(YY+1) - p(YY-1)" if relation == "gt" else "p(YY-1) - p(YY+1)"
    good = RELATION_WORDS[relation]
    return f"PD = sum of p(ZZ) over {good} minus the sum over the other ZZ; CS = {cs}"


def _slots(text: str) -> list[str]:
    return [f for _, f, spec, conv in string.Formatter().parse(text) if f is not None]


def _check_slots(name: str, where: str, key: str, text: str, known: set[str]) -> None:
    """Every ``{slot}`` of a template is one the prompt builder fills, and the braces balance
    (``str.format`` would fail on each prompt otherwise)."""
    if not isinstance(text, str):
        raise UserError(f"template '{name}' in {where}: {key} must be a string.")
    try:
        slots = _slots(text)
    except ValueError as err:
        raise UserError(
            f"template '{name}' in {where}: {key} has unbalanced braces ({err}); write a literal "
            "brace as '{{' or '}}'."
        ) from None
    derived = "YY" in known
    for slot in slots:
        ok = _PREV.fullmatch("{" + slot + "}") or (derived and _DERIVED.fullmatch(slot))
        if slot not in known and not ok:
            raise UserError(
                f"template '{name}' in {where}: {key} has the unknown slot '{{{slot}}}' (slots: "
                f"{', '.join('{' + k + '}' for k in sorted(known))}, {{prev1}}..{{prevK}}"
                f"{', {YY+k}, {YY-k}' if derived else ''})."
            )


def _template_text(name: str, t: dict[str, Any], where: str) -> tuple[str, tuple[int, ...]]:
    """The template's text and the k of each of its ``{YY+k}`` slots."""
    text = _req(t, "text", where)
    _check_slots(name, where, "text", text, {"noun", "XX", "YY"})
    offsets = tuple(sorted({int(m.group(1)) for f in _slots(text) if (m := _DERIVED.fullmatch(f))}))
    if text.count("{XX}{YY}") != 1 or not text.endswith("{XX}"):
        raise UserError(
            f"template '{name}' in {where} must contain '{{XX}}{{YY}}' once and end with '{{XX}}'."
        )
    return text, offsets


def _relation(name: str, t: dict[str, Any], where: str) -> str:
    relation = t.get("relation", "gt")
    if relation not in RELATIONS:
        raise UserError(
            f"template '{name}' in {where} has relation '{relation}' (use gt, lt or exact)."
        )
    return str(relation)


def _sequence(name: str, t: dict[str, Any], where: str, text: str) -> tuple[str, int]:
    """The ``sequence`` rule and the number of ``{prevK}`` slots it fills."""
    sequence = str(t.get("sequence", ""))
    if sequence not in SEQUENCES:
        raise UserError(
            f"template '{name}' in {where} has sequence '{sequence}' "
            f"(use {' or '.join(s for s in SEQUENCES if s)})."
        )
    slots = sorted({int(k) for k in _PREV.findall(text)})
    if slots and slots != list(range(1, len(slots) + 1)):
        raise UserError(f"template '{name}' in {where} must number its slots {{prev1}}..{{prevK}}.")
    if bool(slots) != bool(sequence):
        raise UserError(
            f"template '{name}' in {where} needs both {{prevK}} slots and a 'sequence' rule, "
            f"or neither."
        )
    return sequence, len(slots)


def _step(t: dict[str, Any], where: str, section: str, sequence: str) -> int:
    """The arithmetic step (0: Hanna's rule; 1 for a consecutive sequence)."""
    step = t.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or step > 99:
        raise UserError(f"task file {where}: {section}.step must be an integer from 1 to 99.")
    if step and sequence != "arithmetic":
        raise UserError(
            f'task file {where}: {section}.step needs sequence = "arithmetic" (got {sequence!r}).'
        )
    return 1 if sequence == "consecutive" else step


def _answer_offset(
    name: str, t: dict[str, Any], where: str, section: str, relation: str, sequence: str
) -> int | None:
    """k of ``answer = "YY+k"``; an exact relation needs it or a sequence rule giving the answer."""
    answer_offset: int | None = None
    if "answer" in t:
        m = _ANSWER.fullmatch(str(t["answer"]))
        if relation != "exact" or m is None:
            raise UserError(
                f'task file {where}: {section}.answer must be "YY+k" (or "YY-k") on a '
                f'template with relation = "exact", got {t["answer"]!r}.'
            )
        answer_offset = int((m.group(1) or "0").replace(" ", ""))
    exact_rule = sequence in ("arithmetic", "consecutive") or answer_offset is not None
    if relation == "exact" and not exact_rule:
        raise UserError(
            f"template '{name}' in {where} has relation 'exact', which needs sequence = "
            f'"arithmetic" or "consecutive", or answer = "YY+k" (the rule that gives the answer).'
        )
    return answer_offset


def _template_nouns(name: str, t: dict[str, Any], where: str, base: Path) -> tuple[str, ...]:
    """The template's own nouns (``nouns`` or ``nouns_file``); empty: the task's."""
    if "nouns" in t and "nouns_file" in t:
        raise UserError(f"template '{name}' in {where} sets both 'nouns' and 'nouns_file'.")
    nouns: tuple[str, ...] = ()
    if "nouns" in t:
        nouns = tuple(str(n).strip() for n in t["nouns"] if str(n).strip())
    elif "nouns_file" in t:
        nouns = _read_nouns(base / str(t["nouns_file"]), where)
    if ("nouns" in t or "nouns_file" in t) and not nouns:
        raise UserError(f"template '{name}' in {where} lists no nouns.")
    return nouns


def _counterfactual_text(name: str, t: dict[str, Any], where: str) -> str:
    cf_text = str(t.get("counterfactual_text", ""))
    _check_slots(name, where, "counterfactual_text", cf_text, {"noun", "XX"})
    if cf_text and not cf_text.endswith("{XX}"):
        raise UserError(
            f"template '{name}' in {where}: counterfactual_text must end with '{{XX}}'."
        )
    return cf_text


def _year_range(name: str, t: dict[str, Any], where: str) -> tuple[int, int] | None:
    yr = t.get("year_range")
    if yr is not None and (len(yr) != 2 or int(yr[0]) >= int(yr[1])):
        raise UserError(f"template '{name}' in {where} needs year_range = [start, stop).")
    return (int(yr[0]), int(yr[1])) if yr else None


def _template(
    name: str, t: dict[str, Any], where: str, base: Path, corrupt_default: str, kind: str
) -> Template:
    """One ``[templates.<name>]`` or ``[families.<name>]`` table, checked in file order of its
    rules (the first broken one is the error; _check_tables has checked its keys)."""
    section = f"{kind}.{name}"
    text, offsets = _template_text(name, t, where)
    relation = _relation(name, t, where)
    sequence, n_prev = _sequence(name, t, where, text)
    step = _step(t, where, section, sequence)
    answer_offset = _answer_offset(name, t, where, section, relation, sequence)
    nouns = _template_nouns(name, t, where, base)
    cf = str(t.get("counterfactual", corrupt_default))
    cf_text = _counterfactual_text(name, t, where)
    year_range = _year_range(name, t, where)
    return Template(
        name=name,
        text=text,
        bos=bool(t.get("bos", True)),
        relation=relation,
        year_range=year_range,
        source=str(t.get("source", "")),
        counterfactual=cf,
        counterfactual_text=cf_text,
        nouns=nouns,
        sequence=sequence,
        n_prev=n_prev,
        metric=str(t.get("metric", default_metric(relation))),
        step=int(step),
        offsets=offsets,
        answer_offset=answer_offset,
    )


def _answer_count(value: Any, where: str) -> int:
    """``answers.count``: the answers are the two-digit tokens "00".. (index = ZZ), 1 to 100."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise UserError(
            f"task file {where}: answers.count must be an integer from 1 to 100 (the answer "
            f'tokens "00".."99"), got {value!r}.'
        )
    return value


def resolve_task_path(name: str | Path, root: Path | None = None) -> Path:
    """The ``task.toml`` for a task name (under ``root``, default tasks/), directory or file."""
    text = str(name)
    as_path = Path(text).expanduser()
    if as_path.suffix == ".toml":
        if not as_path.is_file():
            raise UserError(f"the task file {as_path} does not exist.")
        return as_path
    path = (root or tasks_dir()) / text / "task.toml"
    looks_like_path = "/" in text or "\\" in text or text.startswith(".")
    if root is None and (looks_like_path or (as_path.is_dir() and not path.is_file())):
        if not (as_path / "task.toml").is_file():
            raise UserError(f"the task directory {as_path} holds no task.toml.")
        return as_path / "task.toml"
    if not path.is_file():
        known = sorted(p.parent.name for p in tasks_dir().glob("*/task.toml"))
        raise UserError(f"unknown task '{text}' (known tasks: {', '.join(known)}).")
    return path


def _check_tables(data: dict[str, Any], where: str) -> None:
    """Every table of the file holds only its allowed keys (the required ones are present)."""
    check_keys(_req(data, "year_filter", where), YEAR_FILTER_KEYS, where, "year_filter")
    check_keys(_req(data, "corruption", where), CORRUPTION_KEYS, where, "corruption")
    check_keys(_req(data, "answers", where), ANSWERS_KEYS, where, "answers")
    check_keys(data.get("graph", {}), GRAPH_KEYS, where, "graph")
    _req(_req(data, "corruption", where), "yy", where)  # required, read by _parse_task
    for kind in ("templates", "families"):
        for k, v in data.get(kind, {}).items():
            check_keys(v, TEMPLATE_KEYS, where, f"{kind}.{k}")
    for k, v in _req(data, "datasets", where).items():
        check_keys(v, DATASET_KEYS, where, f"datasets.{k}")


def _datasets(data: dict[str, Any], where: str) -> dict[str, DatasetSpec]:
    datasets = {
        k: DatasetSpec(
            k,
            int(_req(v, "n", where)),
            str(_req(v, "sampling", where)),
            int(_req(v, "seed", where)),
        )
        for k, v in _req(data, "datasets", where).items()
    }
    for ds in datasets.values():
        if ds.sampling not in ("balanced", "uniform") or ds.n <= 0:
            raise UserError(f"dataset '{ds.name}' in {where} needs n > 0 and a known sampling.")
    return datasets


def _parse_task(path: Path) -> TaskSpec:
    """The task file at ``path`` as a TaskSpec; each table checked (``_check_tables``) before any
    is read."""
    base = path.parent
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    where = str(path)
    check_keys(data, TOP_KEYS, where, "")
    nouns = _read_nouns(base / _req(data, "nouns_file", where), where)
    _check_tables(data, where)
    yf, answers, graph = data["year_filter"], data["answers"], data.get("graph", {})
    corrupt = str(data["corruption"]["yy"])
    templates = {
        k: _template(k, v, where, base, corrupt, "templates")
        for k, v in _req(data, "templates", where).items()
    }
    families = {
        k: _template(k, v, where, base, corrupt, "families")
        for k, v in data.get("families", {}).items()
    }
    datasets = _datasets(data, where)
    return TaskSpec(
        name=str(_req(data, "name", where)),
        description=str(data.get("description", "")),
        nouns=nouns,
        year_start=int(_req(yf, "start", where)),
        year_stop=int(_req(yf, "stop", where)),
        year_tokens=int(yf.get("tokens", 2)),
        suffix_chars=int(yf.get("suffix_chars", 2)),
        drop_century_ends=bool(yf.get("drop_century_ends", True)),
        corrupt_yy=corrupt,
        n_answers=_answer_count(_req(answers, "count", where), where),
        templates=templates,
        families=families,
        datasets=datasets,
        default_template=str(data.get("default_template", next(iter(templates), ""))),
        default_family=str(data.get("default_family", "")),
        path=path,
        graph_prompt=str(graph.get("prompt", "")),
        graph_template=str(graph.get("template", "")),
        graph_noun=str(graph.get("noun", "")),
        graph_year=int(graph.get("year", 0)),
        answer_label=str(answers.get("label", "answer ZZ")),
        question_label=str(answers.get("question_label", "start YY")),
    )


def _check_references(spec: TaskSpec, path: Path) -> None:
    """The task's nouns exist, and its defaults and graph prompt name templates it has."""
    if not spec.nouns:
        raise UserError(f"task file {path} lists no nouns.")
    if spec.default_template not in spec.templates:
        raise UserError(f"task file {path} names an unknown default template.")
    for key, name in (
        ("default_family", spec.default_family),
        ("graph.template", spec.graph_template),
    ):
        if name and name not in spec.all_templates():
            raise UserError(
                f"task file {path}: {key} names the unknown template or family '{name}'."
            )
    if spec.graph_prompt and (spec.graph_template or spec.graph_noun or spec.graph_year):
        raise UserError(
            f"task file {path}: graph.prompt is a fixed text; give it or graph.template / noun / "
            f"year, not both."
        )


def load_task(name: str | Path = "greater_than", root: Path | None = None) -> TaskSpec:
    """Read and validate a task: a name under ``root`` (default tasks/), a directory, or a file."""
    path = resolve_task_path(name, root)
    try:
        spec = _parse_task(path)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"task file {path} is not valid TOML ({err}).") from err
    except UserError:  # a ValueError, but already one clear sentence
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
        raise UserError(f"task file {path} is malformed ({err}).") from err
    _check_references(spec, path)
    return spec


def task_fingerprint(name: str | Path) -> str:
    """Hash of a task's data as loaded (task file and nouns), so edited task data reruns stages."""
    spec = load_task(name)
    return hashlib.sha256(repr(replace(spec, path=Path())).encode()).hexdigest()[:16]
