"""The task stage: clean/corrupted metrics and the YY x ZZ probability heatmap."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from clt_bench.config import RunConfig
from clt_bench.io import run_metadata, save_tensors, write_json
from clt_bench.models import LoadedModel
from clt_bench.plots import SCALE_CAPTIONS, yy_zz_heatmap
from clt_bench.task.dataset import TaskBatch, build_dataset, check_context
from clt_bench.task.end_logits import clean_and_corrupted
from clt_bench.task.families import format_families_table, write_families
from clt_bench.task.metrics import (
    answer_probs,
    cutoff_sharpness_per_example,
    heatmap_rows,
    logit_diff_per_example,
    prob_diff_per_example,
    yy_heatmap,
)
from clt_bench.task.spec import load_task

log = logging.getLogger(__name__)
# per-family numbers copied into metrics.json (the full rows are in families.csv)
FAMILY_KEYS = (
    "name",
    "relation",
    "n",
    "prob_diff",
    "cutoff_sharpness",
    "corrupted_prob_diff",
    "error",
)


def load_task_batch(cfg: RunConfig, loaded: LoadedModel, dataset: str | None = None) -> TaskBatch:
    """The run's task batch: ``task.template`` (empty: the task file's default_template)."""
    spec = load_task(cfg.task.task)
    template = cfg.task.template or spec.default_template
    batch = build_dataset(
        spec,
        loaded.tokenizer,
        dataset or cfg.task.dataset,
        template,
        n=cfg.task.n or None,
        seed=cfg.task.seed,
    )
    return check_context(batch, loaded.bridge, template)


def run_task_stage(cfg: RunConfig, loaded: LoadedModel, out_dir: Path) -> dict[str, Any]:
    """Evaluate the model on the task; write ``<out>/task/metrics.json`` and ``heatmap.png``."""
    t0 = time.perf_counter()
    stage_dir = Path(out_dir) / "task"
    spec = load_task(cfg.task.task)
    batch = load_task_batch(cfg, loaded)
    clean, corrupt, task_m = clean_and_corrupted(loaded.bridge, batch, cfg.task.batch_size)
    compact = torch.arange(len(batch.answer_ids))  # columns of the compact logits
    rows = heatmap_rows(len(compact))  # the task's answer space: [answers] count
    heat = yy_heatmap(answer_probs(clean, compact), batch.yy, rows)
    heat_path = yy_zz_heatmap(
        heat.numpy(),
        stage_dir / "heatmap.png",
        f"{loaded.name}: mean p(ZZ | YY), {batch.template} template, n={len(batch)}\n"
        f"({SCALE_CAPTIONS['row']})",
        scale="row",
        axes=(spec.question_label, spec.answer_label),
        yy_values=rows,
        answers=batch.row_answers(rows),
    )
    families = write_families(cfg, loaded, spec, stage_dir)
    metrics: dict[str, Any] = {
        "model": loaded.name,
        "task": cfg.task.task,
        "task_file": str(spec.path),
        "template": batch.template,
        "relation": batch.relation,
        "dataset": cfg.task.dataset,
        "n_examples": len(batch),
        "seed": batch.seed,
        "example_prompt": batch.prompts[0],
        "yy_position": batch.yy_pos,
        "end_position": batch.end_pos,
        **task_m,
        "n_noncanonical_corrupted": int((~batch.canonical_corrupted).sum()),
        "heatmap": heat_path.name,
        "heatmap_scale": SCALE_CAPTIONS["row"],
        "families": [{k: r[k] for k in FAMILY_KEYS} for r in families],
        "heatmap_matrix": [[None if v != v else round(v, 6) for v in row] for row in heat.tolist()],
        "wall_seconds": round(time.perf_counter() - t0, 3),
        **run_metadata(seeds={"dataset": batch.seed}),
    }
    write_json(stage_dir / "metrics.json", metrics)
    save_per_prompt(stage_dir / "per_prompt.safetensors", clean, corrupt, batch)
    if families:
        log.info("prompt families:\n%s", format_families_table(families))
    log.info("task stage wrote %s", stage_dir)
    return metrics


def save_per_prompt(
    path: Path, clean: torch.Tensor, corrupt: torch.Tensor, batch: TaskBatch
) -> Path:
    """Per-example values [n] whose means are the headline metrics (for bootstrap intervals).

    ``clean`` / ``corrupt``: [n, 101] compact END logits (the 100 answers, then the rest).
    """
    compact = torch.arange(len(batch.answer_ids))
    p, pc = answer_probs(clean, compact), answer_probs(corrupt, compact)
    yy, rel = batch.yy, batch.relation
    a = batch.answer if rel == "exact" else None
    return save_tensors(
        path,
        {
            "prob_diff": prob_diff_per_example(p, yy, rel, a),
            "cutoff_sharpness": cutoff_sharpness_per_example(p, yy, rel, a),
            "corrupted_prob_diff": prob_diff_per_example(pc, yy, rel, a),
            "logit_diff": logit_diff_per_example(clean[:, compact].double(), yy, rel, answer=a),
            "yy": yy,
        },
    )


def format_task_table(m: dict[str, Any]) -> str:
    rows = [
        ("model", m["model"]),
        ("template", m["template"]),
        ("examples", m["n_examples"]),
        ("prob_diff", f"{m['prob_diff']:.3f}"),
        ("cutoff_sharpness", f"{m['cutoff_sharpness']:.3f}"),
        ("corrupted_prob_diff", f"{m['corrupted_prob_diff']:.3f}"),
        ("logit_diff", f"{m['logit_diff']:.2f}"),
        ("wall_seconds", f"{m['wall_seconds']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
