"""The report's words that follow the run's task file: its name and template, the relation, the
corruption, the axis names, and whether published greater-than figures are defined for it.

Section titles and intros in ``report.stage`` are written with ``{placeholders}`` filled from
``TaskWords`` (``TaskWords.fill``), so a less-than or a price task never reads "greater-than",
"01-corrupted" or "start year" unless its task file says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from clt_bench.config import RunConfig
from clt_bench.errors import UserError
from clt_bench.task.spec import RELATION_NAMES, RELATION_WORDS, load_task

# where the correct answers lie in a YY x ZZ heatmap (rows YY, columns ZZ, dashed ZZ = YY)
CORRECT_SIDE = {
    "gt": "right of the dashed diagonal",
    "lt": "left of the dashed diagonal",
    "exact": "on one cell per row (the answer, marked by a square)",
}
# the task file and template whose published figures (Hanna et al. 2023, EAP-IG) are defined
PUBLISHED_TASK = ("greater_than", "gt", "01")


@dataclass(frozen=True)
class TaskWords:
    task: str
    task_file: str
    template: str
    template_text: str
    relation: str
    relation_name: str  # greater-than | less-than | exact-answer
    correct: str  # ZZ > YY | ZZ < YY | ZZ = the answer
    correct_side: str
    corrupted: str  # "01-corrupted" | "99-corrupted" | "counterfactual-text"
    question_label: str
    answer_label: str
    published_defined: bool  # the published greater-than figures share the definition

    def fill(self, text: str) -> str:
        return text.format(**asdict(self))

    def metric_label(self, label: str) -> str:
        """A headline label with the task's corruption ("01-corrupted ..." -> "99-corrupted")."""
        return label.replace("01-corrupted", self.corrupted)

    def header(self) -> str:
        return (
            f"task {self.task} ({self.task_file}) · template {self.template}: "
            f"'{self.template_text}' · relation {self.relation} ({self.correct}) · "
            f"{self.corrupted} prompts"
        )


def task_words(cfg: RunConfig) -> TaskWords:
    """The words of ``cfg``'s task and template (the task file's default template when unset)."""
    spec = load_task(cfg.task.task)
    tpl = spec.template(cfg.task.template or spec.default_template)
    corrupted = "counterfactual-text" if tpl.counterfactual_text else f"{tpl.counterfactual}"
    return TaskWords(
        task=spec.name,
        task_file=str(spec.path),
        template=tpl.name,
        template_text=tpl.text,
        relation=tpl.relation,
        relation_name=RELATION_NAMES[tpl.relation],
        correct=RELATION_WORDS[tpl.relation],
        correct_side=CORRECT_SIDE[tpl.relation],
        corrupted=f"{corrupted}-corrupted",
        question_label=spec.question_label,
        answer_label=spec.answer_label,
        published_defined=(spec.name, tpl.relation, tpl.counterfactual) == PUBLISHED_TASK
        and not tpl.counterfactual_text,
    )


UNKNOWN = TaskWords(
    task="(task file not readable)",
    task_file="",
    template="",
    template_text="",
    relation="",
    relation_name="task",
    correct="the task's correct answers",
    correct_side="where the task's relation puts them",
    corrupted="corrupted",
    question_label="YY",
    answer_label="ZZ",
    published_defined=False,
)


def task_words_or_default(cfg: RunConfig) -> TaskWords:
    """``task_words``, or words naming no task when its file cannot be read any more."""
    try:
        return task_words(cfg)
    except UserError:
        return UNKNOWN


def task_rows(
    rows: list[tuple[str, str, str, str]], words: TaskWords
) -> list[tuple[str, str, str, str]]:
    """Headline rows without published task / baseline figures where the run's task is not the
    one they were measured on (docs/MEASURING rule 7: like definitions only)."""
    if words.published_defined:
        return rows
    why = f"no published figure for task {words.task} (template {words.template})"
    return [
        (m, v, "", why) if m.startswith(("task.", "baseline.")) and p else (m, v, p, s)
        for m, v, p, s in rows
    ]


def task_context(metric: str, phrase: str, words: TaskWords) -> str:
    """The headline's context phrase for ``metric``, without a published task / baseline figure
    when the run's task is not the one it was measured on."""
    if words.published_defined or not phrase or not metric.startswith(("task.", "baseline.")):
        return phrase
    return f"no published figure for task {words.task} (template {words.template})"
