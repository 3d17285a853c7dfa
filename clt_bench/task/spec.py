"""Load a task spec from ``tasks/<name>/task.toml`` and validate it."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clt_bench.errors import UserError
from clt_bench.paths import tasks_dir


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    bos: bool = True
    relation: str = "gt"  # gt: correct ZZ > YY; lt: correct ZZ < YY
    year_range: tuple[int, int] | None = None
    source: str = ""


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

    def template(self, name: str) -> Template:
        if name in self.templates:
            return self.templates[name]
        if name in self.families:
            return self.families[name]
        known = sorted(set(self.templates) | set(self.families))
        raise UserError(f"unknown template '{name}' (known: {', '.join(known)}).")

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise UserError(
                f"unknown dataset '{name}' (known: {', '.join(sorted(self.datasets))})."
            )
        return self.datasets[name]


def task_names() -> list[str]:
    return sorted(p.parent.name for p in tasks_dir().glob("*/task.toml"))


def _req(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise UserError(f"task file {where} is missing the key '{key}'.")
    return table[key]


def _template(name: str, t: dict[str, Any], where: str, relation_default: str = "gt") -> Template:
    text = _req(t, "text", where)
    for slot in ("{XX}{YY}",):
        if slot not in text or not text.endswith("{XX}"):
            raise UserError(
                f"template '{name}' in {where} must contain '{{XX}}{{YY}}' and end with '{{XX}}'."
            )
    relation = t.get("relation", relation_default)
    if relation not in ("gt", "lt"):
        raise UserError(f"template '{name}' in {where} has relation '{relation}' (use gt or lt).")
    yr = t.get("year_range")
    return Template(
        name=name,
        text=text,
        bos=bool(t.get("bos", True)),
        relation=relation,
        year_range=tuple(yr) if yr else None,
        source=str(t.get("source", "")),
    )


def load_task(name: str = "greater_than", root: Path | None = None) -> TaskSpec:
    """Read and validate ``<root>/<name>/task.toml`` (root defaults to the project's tasks/)."""
    base = (root or tasks_dir()) / name
    path = base / "task.toml"
    if not path.is_file():
        raise UserError(f"unknown task '{name}' (known tasks: {', '.join(task_names())}).")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        where = str(path)
        nouns_path = base / _req(data, "nouns_file", where)
        if not nouns_path.is_file():
            raise UserError(f"task file {where} names a nouns file that does not exist.")
        nouns = tuple(
            line.strip()
            for line in nouns_path.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
        yf = _req(data, "year_filter", where)
        templates = {k: _template(k, v, where) for k, v in _req(data, "templates", where).items()}
        families = {k: _template(k, v, where) for k, v in data.get("families", {}).items()}
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
        spec = TaskSpec(
            name=str(_req(data, "name", where)),
            description=str(data.get("description", "")),
            nouns=nouns,
            year_start=int(_req(yf, "start", where)),
            year_stop=int(_req(yf, "stop", where)),
            year_tokens=int(yf.get("tokens", 2)),
            suffix_chars=int(yf.get("suffix_chars", 2)),
            drop_century_ends=bool(yf.get("drop_century_ends", True)),
            corrupt_yy=str(_req(_req(data, "corruption", where), "yy", where)),
            n_answers=int(_req(_req(data, "answers", where), "count", where)),
            templates=templates,
            families=families,
            datasets=datasets,
            default_template=str(data.get("default_template", next(iter(templates)))),
            default_family=str(data.get("default_family", "")),
            path=path,
        )
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"task file {path} is not valid TOML ({err}).") from err
    except UserError:  # a ValueError, but already one clear sentence
        raise
    except (TypeError, ValueError, AttributeError) as err:
        raise UserError(f"task file {path} is malformed ({err}).") from err
    if not spec.nouns:
        raise UserError(f"task file {path} lists no nouns.")
    if spec.default_template not in spec.templates:
        raise UserError(f"task file {path} names an unknown default template.")
    return spec
