"""Every template and prompt family of a task, scored on the model: ``task/families.csv``.

One row per template/family: model PD / CS / corrupted PD on ``task.family_n`` prompts drawn like
the discovery set (balanced over YY, seeded; 97 = every YY from 2 to 98 once, fewer = evenly spaced
YY), the relation, the counterfactual and the metric in
words. A template the tokenizer cannot build (e.g. years that do not split) gets a row with the
reason in ``error`` instead of stopping the stage.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clt_bench.config import RunConfig
from clt_bench.errors import UserError
from clt_bench.io import atomic_path
from clt_bench.models import LoadedModel
from clt_bench.plots import yy_zz_grid
from clt_bench.task.dataset import build_dataset, check_context
from clt_bench.task.end_logits import clean_and_corrupted
from clt_bench.task.metrics import YY_ROWS, answer_probs, yy_heatmap
from clt_bench.task.spec import TaskSpec

log = logging.getLogger(__name__)
FULL = 97  # one balanced cycle: every YY = 2..98 once

COLUMNS = [
    "name",
    "kind",
    "relation",
    "n",
    "prob_diff",
    "cutoff_sharpness",
    "corrupted_prob_diff",
    "logit_diff",
    "answer_mass",
    "counterfactual",
    "example_prompt",
    "example_corrupted",
    "template",
    "metric",
    "source",
    "error",
]


def evaluate_families(
    cfg: RunConfig, loaded: LoadedModel, spec: TaskSpec, n: int
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, list[int] | None]]:
    """Score every template and family on ``n`` prompts; (rows, name -> [97, 100] p heatmap,
    name -> each heatmap row's answer for an exact family, else None)."""
    rows: list[dict[str, Any]] = []
    heatmaps: dict[str, np.ndarray] = {}
    answers: dict[str, list[int] | None] = {}
    tok = loaded.tokenizer
    for name, (kind, tpl) in spec.all_templates().items():
        row: dict[str, Any] = {c: "" for c in COLUMNS}
        cf = tpl.counterfactual_text or f"YY -> {tpl.counterfactual}"
        row.update(
            name=name,
            kind=kind,
            relation=tpl.relation,
            template=tpl.text,
            metric=tpl.metric,
            source=tpl.source,
            counterfactual=cf,
        )
        try:
            batch = build_dataset(spec, tok, "discovery", name, n=max(n, FULL), seed=cfg.task.seed)
            check_context(batch, loaded.bridge, name)
            if n < FULL:  # the balanced set cycles YY = 2..98: keep evenly spaced YY, not 2..n+1
                batch = batch.subset(np.linspace(0, FULL - 1, n).round().astype(int).tolist())
        except UserError as err:
            row["error"] = str(err)
            rows.append(row)
            log.warning("family %s skipped: %s", name, err)
            continue
        clean, _, m = clean_and_corrupted(loaded.bridge, batch, cfg.task.batch_size)
        compact = torch.arange(len(batch.answer_ids))
        row.update(
            n=len(batch),
            prob_diff=round(m["prob_diff"], 6),
            cutoff_sharpness=round(m["cutoff_sharpness"], 6),
            corrupted_prob_diff=round(m["corrupted_prob_diff"], 6),
            logit_diff=round(m["logit_diff"], 4),
            answer_mass=round(m["answer_mass"], 6),
            example_prompt=batch.prompts[0],
            example_corrupted=tok.decode(batch.corrupted[0].tolist()),
        )
        rows.append(row)
        heatmaps[name] = yy_heatmap(answer_probs(clean, compact), batch.yy).numpy()
        answers[name] = batch.row_answers(YY_ROWS)
    return rows, heatmaps, answers


def write_families(
    cfg: RunConfig, loaded: LoadedModel, spec: TaskSpec, stage_dir: Path
) -> list[dict[str, Any]]:
    """Write ``families.csv`` and ``families_heatmap.png`` into ``stage_dir``; the rows."""
    n = cfg.task.family_n
    if n <= 0:
        return []
    rows, heatmaps, answers = evaluate_families(cfg, loaded, spec, n)
    path = Path(stage_dir) / "families.csv"
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if heatmaps:
        yy_zz_grid(
            heatmaps,
            Path(stage_dir) / "families_heatmap.png",
            f"{loaded.name}: mean p(ZZ | YY) per template and family, n={n} each",
            scale="row",
            answers=answers,
        )
    return rows


def format_families_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the families (name, relation, n, PD, CS, corrupted PD)."""
    lines = [f"{'family':<18} {'rel':<5} {'n':>4} {'PD':>7} {'CS':>7} {'corr PD':>8}"]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['name']:<18} {r['relation']:<5} skipped: {r['error']}")
            continue
        lines.append(
            f"{r['name']:<18} {r['relation']:<5} {r['n']:>4} {r['prob_diff']:>7.3f} "
            f"{r['cutoff_sharpness']:>7.3f} {r['corrupted_prob_diff']:>8.3f}"
        )
    return "\n".join(lines)
