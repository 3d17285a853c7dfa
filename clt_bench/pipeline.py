"""One pipeline, one direction: run the stages in order, resuming finished ones.

config -> model -> task -> baseline -> activations -> clt -> graphs -> features -> compare -> report

Each stage writes ``<run>/<stage>/`` and, when it finishes, ``<run>/<stage>/stage.json`` with a
hash of what its result depends on: the config sections it reads, the model's weights, the code
(package version and a hash of every file of the installed ``clt_bench`` package and its task /
baseline data) and, for a loaded CLT (``clt.load``), the content of its files. A finished stage
whose hash matches is not recomputed (``resume=True``, the default); any change recomputes it and
every later stage.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clt_bench import threads
from clt_bench.config import RunConfig
from clt_bench.errors import UserError
from clt_bench.io import config_hash, read_json, remove_temp_files, write_json
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


# the stages whose outputs each stage reads (the order above respects them; a stage run in a
# second process is waited for where one of these needs it: clt_bench.overlap)
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "task": (),
    "baseline": ("task",),
    "activations": (),
    "clt": ("activations",),
    "graphs": ("task", "clt"),
    "features": ("task", "baseline", "activations", "clt", "graphs"),
    "plt": ("task", "baseline", "activations"),
    "compare": ("task", "baseline", "clt", "graphs", "features", "plt"),
    "report": ("task", "baseline", "activations", "clt", "graphs", "features", "plt", "compare"),
}


@dataclass
class RunContext:
    """What a stage gets: the config, the run directory, the model (loaded once, lazily)."""

    cfg: RunConfig
    run_dir: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _model: LoadedModel | None = None
    _hashes: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            m = self.cfg.model
            self._model = load_model(m.name, m.device, m.dtype, m.seed)
        return self._model

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def stage_hash(self, stage: str) -> str:
        """``stage_hash`` of this run's config, computed once per stage."""
        if stage not in self._hashes:
            self._hashes[stage] = stage_hash(self.cfg, stage)
        return self._hashes[stage]


def _stage_fn(stage: str) -> Callable[[RunContext], dict[str, Any]]:
    target, _ = STAGES[stage]
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def _tree_files(root: Path) -> list[Path]:
    """Every file under ``root`` except bytecode caches, in a stable order."""
    return sorted(
        f
        for f in root.rglob("*")
        if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo")
    )


def _hash_files(root: Path, files: list[Path], digest: Any) -> None:
    """Feed each file's path (relative to ``root``) and bytes into ``digest``."""
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")


@functools.cache
def code_identity() -> str:
    """Package version + hash of the installed ``clt_bench`` files and its task/baseline data.

    The whole package rather than the modules a stage imports: any code change recomputes the run,
    which is what a regression gate needs (a stale stage can never pass for the current code).
    Computed once per process (~20 MB, a fraction of a second).
    """
    import clt_bench
    from clt_bench.paths import PACKAGE_DIR, baselines_dir, tasks_dir

    digest = hashlib.sha256(clt_bench.__version__.encode() + b"\0")
    for root in (PACKAGE_DIR, tasks_dir(), baselines_dir()):
        if root.is_dir():
            digest.update(b"root:" + root.name.encode() + b"\0")
            _hash_files(root, _tree_files(root), digest)
    return f"{clt_bench.__version__}+{digest.hexdigest()[:16]}"


def content_hash(path: str | Path) -> str:
    """Hash of a file's or a directory's contents (names and bytes), e.g. a loaded CLT.

    Cached on the files' names, sizes and modification times, so a run hashes a large CLT once.
    """
    p = Path(path).resolve()
    if not p.exists():
        raise UserError(f"{path} does not exist.")
    files = [p] if p.is_file() else _tree_files(p)
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _content_hash(p, stamp)


@functools.lru_cache(maxsize=8)
def _content_hash(p: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    _hash_files(p.parent if p.is_file() else p, [Path(f) for f, _, _ in stamp], digest)
    return digest.hexdigest()[:16]


def stage_hash(cfg: RunConfig, stage: str) -> str:
    """Hash of everything ``stage``'s result depends on (config, model, code, task data, loaded
    CLT)."""
    sections = STAGES[stage][1]
    parts = [cfg.section_hash(*sections), model_fingerprint(cfg.model.name), code_identity()]
    if "task" in sections:  # the task's data, not only its name: edited task files rerun
        from clt_bench.task.spec import task_fingerprint

        parts.append(task_fingerprint(cfg.task.task))
    if "clt" in sections and cfg.clt.load:
        parts.append(content_hash(cfg.clt.load))  # overwriting a CLT in place is a change
    return config_hash(parts)


def stage_is_current(ctx: RunContext, stage: str) -> bool:
    marker = ctx.stage_dir(stage) / "stage.json"
    if not marker.is_file():
        return False
    try:
        return read_json(marker).get("config_hash") == ctx.stage_hash(stage)
    except UserError:
        return False


# the stages that score a task whose template has the ``exact`` relation (one correct answer) or
# fewer than 100 answers
EXACT_STAGES = ("task",)


def _check_task_tokens(ctx: RunContext, names: list[str], resume: bool) -> None:
    """Task data that is bad only for this model's tokenizer (nouns of several tokens) fails
    before the first stage, not in the middle of the run."""
    reads_task = [s for s in names if "task" in STAGES[s][1]]
    if not reads_task or (resume and all(stage_is_current(ctx, s) for s in reads_task)):
        return
    from clt_bench.task.dataset import check_task_tokens
    from clt_bench.task.spec import load_task

    spec = load_task(ctx.cfg.task.task)
    tpl = spec.template(ctx.cfg.task.template or spec.default_template)
    beyond = [s for s in reads_task if s not in EXACT_STAGES]
    if tpl.relation == "exact" and beyond:
        raise UserError(
            f"template '{tpl.name}' of {spec.path} has relation 'exact', which the task stage "
            f"scores but the {', '.join(beyond)} stage(s) do not yet (they score gt / lt "
            f"templates); run --stages task, or choose a gt or lt template with --template."
        )
    if spec.n_answers != 100 and beyond:
        raise UserError(
            f"task file {spec.path}: answers.count = {spec.n_answers}, which the task stage "
            f"scores but the {', '.join(beyond)} stage(s) do not yet (their attributions and "
            f'heatmaps use the 100 answers "00".."99"); run --stages task, or set '
            f"answers.count = 100."
        )
    check_task_tokens(spec, ctx.model.tokenizer)


def _check_loaded_clt(ctx: RunContext, names: list[str], resume: bool) -> None:
    """A bad ``clt.load`` (unreadable, wrong shape for the model, non-finite) fails before the
    first stage rather than after the task, baseline and activations stages."""
    if not ctx.cfg.clt.load or "clt" not in names:
        return
    if resume and stage_is_current(ctx, "clt"):
        return
    from clt_bench.clt.io import check_fits, load_clt

    clt = load_clt(ctx.cfg.clt.load)
    check_fits(clt, ctx.model.n_layers, ctx.model.d_model, ctx.cfg.clt.load)


STARTED = ".stage-hash"  # written when a stage starts: the hash its partial outputs belong to


def _prepare_stage_dir(ctx: RunContext, stage: str, resume: bool) -> None:
    """Clear outputs that belong to another config or code before a stage is recomputed.

    Stages keep their own caches inside their folder (activation shards, CLT checkpoints, the
    baseline's circuit), keyed by config alone. The outputs of a finished stage being recomputed,
    or of an interrupted attempt under another hash, are removed so that no inner cache can hand
    back a stale result; an interrupted attempt with the same hash keeps its checkpoints.
    """
    d = ctx.stage_dir(stage)
    key = ctx.stage_hash(stage)
    if d.is_dir():
        started = d / STARTED
        same = started.is_file() and started.read_text(encoding="utf-8").strip() == key
        if (d / "stage.json").is_file() or not same or not resume:
            load = ctx.cfg.clt.load
            if load and Path(load).resolve().is_relative_to(d.resolve()):
                raise UserError(
                    f"clt.load={load} lies inside this run's {stage}/ folder, which the run "
                    "rewrites; copy the CLT elsewhere or use another --out."
                )
            shutil.rmtree(d)
        else:  # kept for its checkpoints; the temp files of a killed write are not outputs
            remove_temp_files(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / STARTED).write_text(key + "\n", encoding="utf-8")


def run_pipeline(
    cfg: RunConfig,
    run_dir: str | Path,
    stages: list[str] | None = None,
    resume: bool = True,
    progress: Callable[[str], None] = print,
    model: LoadedModel | None = None,
    overlap: bool = False,
    on_done: Callable[[str, bool], None] | None = None,
    lock: bool = True,
) -> RunContext:
    """Run ``stages`` (default: all, in order) into ``run_dir``; returns the context.

    ``model``: an already loaded model for ``cfg.model`` (a sub-run reuses its parent's).
    ``overlap``: where ``overlap.can_overlap`` allows it, run ``overlap.WORKER_STAGES`` (the plt
    stage) in a second process beside the CLT's (same results at the same thread counts).
    ``clt-bench run`` turns it on (``--serial``: off); from Python it is off by default, because a
    spawned process re-imports the calling script, which then needs an
    ``if __name__ == "__main__":`` guard.
    ``on_done(stage, recomputed)``: called as each stage finishes (True) or is resumed (False).
    ``lock``: hold ``run_dir``'s exclusive lock for the run (:mod:`clt_bench.runlock`; a second
    run of the same folder raises ``UserError`` naming this process); off only in a process that
    the lock holder started to write into the folder.
    """
    if lock:
        from clt_bench.runlock import run_lock

        with run_lock(run_dir):
            remove_temp_files(run_dir, recursive=False)  # of a killed run's report, config.json
            return run_pipeline(
                cfg,
                run_dir,
                stages=stages,
                resume=resume,
                progress=progress,
                model=model,
                overlap=overlap,
                on_done=on_done,
                lock=False,
            )
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
    _check_task_tokens(ctx, names, resume)
    _check_loaded_clt(ctx, names, resume)
    from clt_bench import overlap as ov

    stale = False
    worker: ov.StageWorker | None = None
    # A worker runs ``ov.WORKER_STAGES`` when the plt stage is to be recomputed. It starts once
    # the main process has finished the stages they read (``STAGE_INPUTS``); each of its
    # stages resumes as it would at its place in the serial order (``plan``), and one it
    # recomputes makes what follows it stale, as in the serial loop.
    side: list[str] = []
    if overlap and ov.can_overlap(cfg, names):
        upto = names[: names.index("plt") + 1]
        if not resume or not all(stage_is_current(ctx, s) for s in upto):
            side = [s for s in names if s in ov.WORKER_STAGES]
    needs = {i for s in side for i in STAGE_INPUTS[s] if i in names and i not in side}
    launch_after = max((names.index(s) for s in needs), default=-1)
    plan: dict[str, bool] = {}  # side stage -> may it resume (nothing before it recomputed)

    def collect(stage: str, i: int) -> None:
        nonlocal stale
        assert worker is not None
        t0 = time.perf_counter()
        recomputed = worker.wait(stage)
        done = read_json(ctx.stage_dir(stage) / "stage.json")
        ctx.results[stage] = done.get("summary", {})
        how = (
            f"finished in {done.get('seconds', float('nan')):.1f}s in a second process"
            if recomputed
            else "done earlier (resumed) in a second process"
        )
        progress(f"[{i}/{len(names)}] {stage}: {how} (waited {time.perf_counter() - t0:.1f}s)")
        stale = stale or recomputed  # what follows a recomputed stage is recomputed too
        if on_done is not None:
            on_done(stage, recomputed)

    def launch() -> ov.StageWorker:
        plan.update({s: resume and not stale for s in side if s not in plan})
        progress(f"{' and '.join(side)}: in a second process beside the CLT")
        return ov.StageWorker(cfg, ctx.run_dir, [(s, plan[s]) for s in side])

    if side and launch_after < 0:
        worker = launch()
    try:
        for i, stage in enumerate(names, 1):
            marker = ctx.stage_dir(stage) / "stage.json"
            if worker is not None:
                for s in side:  # the worker's stages that this one reads
                    if s != stage and s in STAGE_INPUTS[stage] and s not in ctx.results:
                        collect(s, names.index(s) + 1)
            if stage in side:
                if worker is None:  # runs in the worker, launched later
                    plan[stage] = resume and not stale
                elif stage not in ctx.results:
                    collect(stage, i)
                continue
            recomputed = not (resume and not stale and stage_is_current(ctx, stage))
            if not recomputed:
                ctx.results[stage] = read_json(marker).get("summary", {})
                progress(f"[{i}/{len(names)}] {stage}: done earlier (resumed)")
            else:
                stale = True  # everything after a recomputed stage is recomputed too
                progress(f"[{i}/{len(names)}] {stage} ...")
                _prepare_stage_dir(ctx, stage, resume)
                threads.apply()  # this process's share of the cores (all, or the main's part)
                t0 = time.perf_counter()
                summary = _stage_fn(stage)(ctx) or {}
                seconds = time.perf_counter() - t0
                ctx.results[stage] = summary
                write_json(
                    marker,
                    {
                        "stage": stage,
                        "config_hash": ctx.stage_hash(stage),
                        "code": code_identity(),
                        "seconds": round(seconds, 2),
                        "summary": summary,
                    },
                )
                progress(f"[{i}/{len(names)}] {stage}: finished in {seconds:.1f}s")
            if on_done is not None:
                on_done(stage, recomputed)
            if side and worker is None and i - 1 == launch_after:
                worker = launch()
    finally:
        if worker is not None:
            worker.stop()
    return ctx
