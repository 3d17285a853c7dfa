"""One pipeline, one direction: run the stages in order, resuming finished ones.

config -> model -> task -> baseline -> activations -> clt -> graphs -> features -> compare -> report

Each stage writes ``<run>/<stage>/`` and, when it finishes, ``<run>/<stage>/stage.json`` with the
hash of the config sections it depends on. A finished stage whose hash matches is not recomputed
(``resume=True``, the default); a changed config recomputes it and every later stage.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clt_bench.config import RunConfig
from clt_bench.errors import UserError
from clt_bench.io import config_hash, read_json, write_json
from clt_bench.models import LoadedModel, load_model, model_fingerprint

log = logging.getLogger(__name__)

# stage -> (module:function, config sections its result depends on)
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "task": ("clt_bench.pipeline_stages:task", ("model", "task")),
    "baseline": ("clt_bench.pipeline_stages:baseline", ("model", "task", "baseline")),
    "activations": ("clt_bench.pipeline_stages:activations", ("model", "activations")),
    "clt": ("clt_bench.pipeline_stages:clt", ("model", "activations", "clt")),
    "graphs": (
        "clt_bench.pipeline_stages:graphs",
        ("model", "task", "activations", "clt", "graphs"),
    ),
    "features": (
        "clt_bench.pipeline_stages:features",
        ("model", "task", "activations", "clt", "graphs", "features"),
    ),
    "plt": (
        "clt_bench.pipeline_stages:plt",
        ("model", "task", "baseline", "activations", "plt", "graphs", "features"),
    ),
    "compare": (
        "clt_bench.pipeline_stages:compare",
        ("model", "task", "baseline", "activations", "clt", "plt", "graphs", "features"),
    ),
    "report": (
        "clt_bench.pipeline_stages:report",
        (
            "model",
            "task",
            "baseline",
            "activations",
            "clt",
            "plt",
            "graphs",
            "features",
            "report",
        ),
    ),
}


@dataclass
class RunContext:
    """What a stage gets: the config, the run directory, the model (loaded once, lazily)."""

    cfg: RunConfig
    run_dir: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _model: LoadedModel | None = None

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            m = self.cfg.model
            self._model = load_model(m.name, m.device, m.dtype, m.seed)
        return self._model

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage


def _stage_fn(stage: str) -> Callable[[RunContext], dict[str, Any]]:
    target, _ = STAGES[stage]
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def stage_hash(cfg: RunConfig, stage: str) -> str:
    parts = [cfg.section_hash(*STAGES[stage][1]), model_fingerprint(cfg.model.name)]
    if "task" in STAGES[stage][1]:  # the task's data, not only its name: edited task files rerun
        from clt_bench.task.spec import task_fingerprint

        parts.append(task_fingerprint(cfg.task.task))
    return config_hash(parts)


def stage_is_current(ctx: RunContext, stage: str) -> bool:
    marker = ctx.stage_dir(stage) / "stage.json"
    if not marker.is_file():
        return False
    try:
        return read_json(marker).get("config_hash") == stage_hash(ctx.cfg, stage)
    except UserError:
        return False


def run_pipeline(
    cfg: RunConfig,
    run_dir: str | Path,
    stages: list[str] | None = None,
    resume: bool = True,
    progress: Callable[[str], None] = print,
    model: LoadedModel | None = None,
) -> RunContext:
    """Run ``stages`` (default: all, in order) into ``run_dir``; returns the context.

    ``model``: an already loaded model for ``cfg.model`` (a sub-run reuses its parent's).
    """
    names = stages or list(STAGES)
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage '{unknown[0]}' (stages: {', '.join(STAGES)}).")
    ctx = RunContext(cfg=cfg, run_dir=Path(run_dir), _model=model)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(ctx.run_dir / "config.json", cfg.to_dict())
    for stage in STAGES:  # finished stages outside ``names`` still feed the report
        if stage not in names and stage_is_current(ctx, stage):
            ctx.results[stage] = read_json(ctx.stage_dir(stage) / "stage.json").get("summary", {})
    stale = False
    for i, stage in enumerate(names, 1):
        marker = ctx.stage_dir(stage) / "stage.json"
        if resume and not stale and stage_is_current(ctx, stage):
            ctx.results[stage] = read_json(marker).get("summary", {})
            progress(f"[{i}/{len(names)}] {stage}: done earlier (resumed)")
            continue
        stale = True  # everything after a recomputed stage is recomputed too
        progress(f"[{i}/{len(names)}] {stage} ...")
        t0 = time.perf_counter()
        summary = _stage_fn(stage)(ctx) or {}
        seconds = time.perf_counter() - t0
        ctx.results[stage] = summary
        write_json(
            marker,
            {
                "stage": stage,
                "config_hash": stage_hash(cfg, stage),
                "seconds": round(seconds, 2),
                "summary": summary,
            },
        )
        progress(f"[{i}/{len(names)}] {stage}: finished in {seconds:.1f}s")
    return ctx
