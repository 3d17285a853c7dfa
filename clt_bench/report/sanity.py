"""Does the model do the task at all? The report's sanity flag (docs/methods.md, "report").

Every faithfulness ratio, replacement PD ratio and units-needed count divides by the model's own
effect, which is noise near zero for a model that does not do the task (a mis-loaded checkpoint,
random weights: a random GPT-2 showed a paths ratio of 0.988). The flag is raised when
``task.prob_diff < MIN_PROB_DIFF`` or ``|task.prob_diff - task.corrupted_prob_diff| < MIN_GAP``;
the report then says so at the top and shows those metrics as ``undefined``, while
``metrics.json`` keeps their values for the record.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any

MIN_PROB_DIFF = 0.05
MIN_GAP = 0.05
UNDEFINED = "undefined"
# headline metrics whose denominator is the model's task effect
_RATIO = re.compile(
    r"^(baseline|compare|plt|features)\.(.*ratio.*|.*_units_\d+|.*pd_kept.*|.*pd_contribution.*)$"
)


@dataclass(frozen=True)
class Sanity:
    ok: bool
    prob_diff: float
    corrupted_prob_diff: float
    message: str  # one sentence, empty when ok


def check_task(headline: dict[str, Any]) -> Sanity:
    """The flag from a run's headline (``task.prob_diff``, ``task.corrupted_prob_diff``); a run
    without a task stage is not flagged."""
    pd = headline.get("task.prob_diff")
    cpd = headline.get("task.corrupted_prob_diff")
    if not isinstance(pd, int | float) or not isinstance(cpd, int | float):
        return Sanity(True, math.nan, math.nan, "")
    pd, cpd = float(pd), float(cpd)
    reasons = []
    if not math.isfinite(pd) or pd < MIN_PROB_DIFF:
        reasons.append(f"its probability difference is {pd:.3g} (below {MIN_PROB_DIFF:g})")
    if not math.isfinite(pd - cpd) or abs(pd - cpd) < MIN_GAP:
        reasons.append(
            f"clean and corrupted prompts give nearly the same probability difference "
            f"({pd:.3g} vs {cpd:.3g}, gap below {MIN_GAP:g})"
        )
    if not reasons:
        return Sanity(True, pd, cpd, "")
    message = (
        "This model does not do the task: "
        + " and ".join(reasons)
        + ", so every ratio to the model's effect (faithfulness, replacement PD ratio, units "
        "needed) is undefined and shown as such; check that the checkpoint loaded is the one "
        "you meant."
    )
    return Sanity(False, pd, cpd, message)


def ratio_metrics(headline: dict[str, Any]) -> list[str]:
    """The headline metrics whose denominator is the model's task effect."""
    return sorted(k for k in headline if _RATIO.match(k))


def displayed(headline: dict[str, Any], sanity: Sanity) -> dict[str, Any]:
    """The headline as the report shows it: the ratio metrics ``undefined`` when flagged."""
    if sanity.ok:
        return headline
    return {k: (UNDEFINED if k in set(ratio_metrics(headline)) else v) for k, v in headline.items()}


def banner_html(sanity: Sanity) -> str:
    """The flag as the first paragraph of report.html ("" when the model does the task)."""
    if sanity.ok:
        return ""
    return f"<p class='note' id='sanity'><b>{html.escape(sanity.message)}</b></p>"


def to_json(sanity: Sanity) -> dict[str, Any]:
    return {
        "model_does_task": sanity.ok,
        "min_prob_diff": MIN_PROB_DIFF,
        "min_gap": MIN_GAP,
        "message": sanity.message,
    }
