"""The runner: run the stages of :mod:`clt_bench.stages` in order, resuming finished ones.

config -> model -> task -> baseline -> activations -> clt -> graphs -> features -> plt -> compare
-> report

Each stage writes ``<run>/<stage>/`` and, when it finishes, ``<run>/<stage>/stage.json`` with a
hash of what its result depends on: the config sections it declares, the model's weights, the
code (package version and a hash of every file of the installed ``clt_bench`` package and its
task / baseline data), the task's data where it reads the task and, for a loaded CLT
(``clt.load``), the content of its files. A finished stage whose hash matches is not recomputed
(``resume=True``, the default); any change recomputes it and every later stage. Resume, hashing
and timing live here only: the stages compute.

Sub-runs (the PLT's stages in ``<run>/plt/``, the extra CLT seeds, the plt worker process) go
through :func:`run_subrun`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from clt_bench import threads
from clt_bench.artifacts import StageRecord, load_stage_record, save_stage_record, stage_summary
from clt_bench.clt.cpu_alloc import keep_freed_memory
from clt_bench.config import RunConfig
from clt_bench.errors import UserError
from clt_bench.io import (
    config_hash,
    content_hash,
    hash_files,
    remove_temp_files,
    tree_files,
    write_json,
)
from clt_bench.models import LoadedModel, model_fingerprint
from clt_bench.plt_worker import StageWorker, can_overlap, worker_stages
from clt_bench.run_context import RunContext
from clt_bench.stages import STAGES, Stage

Progress = Callable[[str], None]
OnDone = Callable[[str, bool], None]

__all__ = [
    "STAGES",
    "RunContext",
    "code_identity",
    "content_hash",
    "run_pipeline",
    "run_subrun",
    "stage_hash",
    "stage_is_current",
]


def stage_table() -> dict[str, Stage]:
    """Name -> stage, in run order (read at call time: tests swap ``STAGES``)."""
    return {s.name: s for s in STAGES}


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
            hash_files(root, tree_files(root), digest)
    return f"{clt_bench.__version__}+{digest.hexdigest()[:16]}"


def stage_hash(cfg: RunConfig, stage: str) -> str:
    """Hash of everything ``stage``'s result depends on (config, model, code, task data, loaded
    CLT)."""
    sections = stage_table()[stage].sections
    parts = [cfg.section_hash(*sections), model_fingerprint(cfg.model.name), code_identity()]
    if "task" in sections:  # the task's data, not only its name: edited task files rerun
        from clt_bench.task.spec import task_fingerprint

        parts.append(task_fingerprint(cfg.task.task))
    if "clt" in sections and cfg.clt.load:
        parts.append(content_hash(cfg.clt.load))  # overwriting a CLT in place is a change
    return config_hash(parts)


def _ctx_hash(ctx: RunContext, stage: str) -> str:
    """``stage_hash`` of this run's config, computed once per stage."""
    if stage not in ctx.hashes:
        ctx.hashes[stage] = stage_hash(ctx.cfg, stage)
    return ctx.hashes[stage]


def stage_is_current(ctx: RunContext, stage: str) -> bool:
    try:
        record = load_stage_record(ctx.run_dir, stage)
    except UserError:
        return False
    return record is not None and record.get("config_hash") == _ctx_hash(ctx, stage)


def _check_task_tokens(ctx: RunContext, names: list[str], resume: bool) -> None:
    """Task data that is bad only for this model's tokenizer (nouns of several tokens) fails
    before the first stage, not in the middle of the run."""
    table = stage_table()
    reads_task = [s for s in names if "task" in table[s].sections]
    if not reads_task or (resume and all(stage_is_current(ctx, s) for s in reads_task)):
        return
    from clt_bench.task.dataset import check_task_tokens
    from clt_bench.task.spec import load_task

    check_task_tokens(load_task(ctx.cfg.task.task), ctx.model.tokenizer)


def _check_loaded_clt(ctx: RunContext, names: list[str], resume: bool) -> None:
    """A bad ``clt.load`` (unreadable, wrong shape for the model, non-finite) fails before the
    first stage rather than after the task, baseline and activations stages."""
    if not ctx.cfg.clt.load or "clt" not in names or (resume and stage_is_current(ctx, "clt")):
        return
    from clt_bench.clt.circuit_tracer_io import check_fits, load_clt

    clt = load_clt(ctx.cfg.clt.load)
    check_fits(clt, ctx.model.n_layers, ctx.model.d_model, ctx.cfg.clt.load)


STARTED = ".stage-hash"  # written when a stage starts: the hash its partial outputs belong to


def _prepare_stage_dir(ctx: RunContext, stage: str, resume: bool) -> None:
    """Clear outputs that belong to another config or code before a stage is recomputed.

    Stages keep their own caches inside their folder (activation shards, CLT checkpoints, the
    baseline's circuit), keyed by config alone. The outputs of a finished stage being recomputed,
    or of an interrupted attempt under another hash, are removed so that no inner cache can hand
    back a stale result; an interrupted attempt with the same hash keeps its checkpoints (a killed
    CLT training resumes from its last one).
    """
    d = ctx.stage_dir(stage)
    key = _ctx_hash(ctx, stage)
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


class _Runner:
    """One pass over ``names``: resume or compute each stage, in order; the plt worker's stages
    (``side``) run in a second process and are waited for where a stage reads them.

    ``stale`` turns True at the first recomputed stage: everything after it is recomputed too.
    """

    def __init__(
        self,
        ctx: RunContext,
        names: list[str],
        resume: bool,
        progress: Progress,
        on_done: OnDone | None,
        side: list[str],
    ) -> None:
        self.ctx, self.names, self.resume = ctx, names, resume
        self.progress, self.on_done = progress, on_done
        self.table = stage_table()
        self.stale = False
        self.side = side
        self.worker: StageWorker | None = None
        self.plan: dict[str, bool] = {}  # side stage -> may it resume (nothing before recomputed)
        needs = {i for s in side for i in self.table[s].inputs if i in names and i not in side}
        self.launch_after = max((names.index(s) for s in needs), default=-1)

    def _label(self, stage: str) -> str:
        return f"[{self.names.index(stage) + 1}/{len(self.names)}] {stage}"

    def _done(self, stage: str, recomputed: bool) -> None:
        if self.on_done is not None:
            self.on_done(stage, recomputed)

    def launch(self) -> None:
        self.plan.update(
            {s: self.resume and not self.stale for s in self.side if s not in self.plan}
        )
        self.progress(f"{' and '.join(self.side)}: in a second process beside the CLT")
        self.worker = StageWorker(
            self.ctx.cfg, self.ctx.run_dir, [(s, self.plan[s]) for s in self.side], run_subrun
        )

    def collect(self, stage: str) -> None:
        """Wait for the worker's ``stage`` and take its summary."""
        assert self.worker is not None
        t0 = time.perf_counter()
        recomputed = self.worker.wait(stage)
        done = load_stage_record(self.ctx.run_dir, stage)
        assert done is not None, f"the worker finished {stage} without its record"
        self.ctx.results[stage] = done.get("summary", {})
        how = (
            f"finished in {done.get('seconds', float('nan')):.1f}s in a second process"
            if recomputed
            else "done earlier (resumed) in a second process"
        )
        self.progress(f"{self._label(stage)}: {how} (waited {time.perf_counter() - t0:.1f}s)")
        self.stale = self.stale or recomputed
        self._done(stage, recomputed)

    def compute(self, stage: str) -> None:
        """Run ``stage`` here, timed, and record its ``stage.json``."""
        ctx = self.ctx
        self.progress(f"{self._label(stage)} ...")
        _prepare_stage_dir(ctx, stage, self.resume)
        threads.apply()  # this process's share of the cores (all, or the main's part)
        t0 = time.perf_counter()
        summary = self.table[stage].run(ctx) or {}
        seconds = time.perf_counter() - t0
        ctx.results[stage] = summary
        record = StageRecord(
            stage=stage,
            config_hash=_ctx_hash(ctx, stage),
            code=code_identity(),
            seconds=round(seconds, 2),
            summary=summary,
        )
        save_stage_record(ctx.run_dir, record)
        self.progress(f"{self._label(stage)}: finished in {seconds:.1f}s")

    def step(self, i: int, stage: str) -> None:
        if self.worker is not None:
            for s in self.side:  # the worker's stages that this one reads
                if s != stage and s in self.table[stage].inputs and s not in self.ctx.results:
                    self.collect(s)
        if stage in self.side:
            if self.worker is None:  # runs in the worker, launched later
                self.plan[stage] = self.resume and not self.stale
            elif stage not in self.ctx.results:
                self.collect(stage)
            return
        if self.resume and not self.stale and stage_is_current(self.ctx, stage):
            self.ctx.results[stage] = stage_summary(self.ctx.run_dir, stage)
            self.progress(f"{self._label(stage)}: done earlier (resumed)")
            self._done(stage, False)
        else:
            self.stale = True
            self.compute(stage)
            self._done(stage, True)
        if self.side and self.worker is None and i == self.launch_after:
            self.launch()

    def run(self) -> None:
        if self.side and self.launch_after < 0:
            self.launch()
        try:
            for i, stage in enumerate(self.names):
                self.step(i, stage)
        finally:
            if self.worker is not None:
                self.worker.stop()


def _worker_side(ctx: RunContext, names: list[str], resume: bool, overlap: bool) -> list[str]:
    """The stages a second process runs: the worker's, when the plt stage is to be recomputed."""
    if not (overlap and can_overlap(ctx.cfg, names)):
        return []
    upto = names[: names.index("plt") + 1]
    if resume and all(stage_is_current(ctx, s) for s in upto):
        return []
    return [s for s in names if s in worker_stages()]


def run_pipeline(
    cfg: RunConfig,
    run_dir: str | Path,
    stages: Sequence[str] | None = None,
    resume: bool = True,
    progress: Progress = print,
    model: LoadedModel | None = None,
    overlap: bool = False,
    on_done: OnDone | None = None,
    lock: bool = True,
) -> RunContext:
    """Run ``stages`` (default: all, in order) into ``run_dir``; returns the context.

    ``model``: an already loaded model for ``cfg.model`` (a sub-run reuses its parent's).
    ``overlap``: where ``plt_worker.can_overlap`` allows it, run the plt stage in a second process
    beside the CLT's (same results at the same thread counts). ``clt-bench run`` turns it on
    (``--serial``: off); from Python it is off by default, because a spawned process re-imports
    the calling script, which then needs an ``if __name__ == "__main__":`` guard.
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
                cfg, run_dir, stages, resume, progress, model, overlap, on_done, lock=False
            )
    table = stage_table()
    names = list(stages or table)
    unknown = [s for s in names if s not in table]
    if unknown:
        raise UserError(f"unknown stage '{unknown[0]}' (stages: {', '.join(table)}).")
    names = [s for s in table if s in names]  # the declared order
    ctx = RunContext(
        cfg, Path(run_dir), _model=model, run_subrun=run_subrun, progress=progress, overlap=overlap
    )
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(ctx.run_dir / "config.json", cfg.to_dict())
    for stage in table:  # finished stages outside ``names`` still feed the report
        if stage not in names and stage_is_current(ctx, stage):
            ctx.results[stage] = stage_summary(ctx.run_dir, stage)
    _check_task_tokens(ctx, names, resume)
    _check_loaded_clt(ctx, names, resume)
    keep_freed_memory()  # every stage's big tensors are reused, not re-mapped (cpu_alloc)
    side = _worker_side(ctx, names, resume, overlap)
    _Runner(ctx, names, resume, progress, on_done, side).run()
    return ctx


def run_subrun(
    cfg: RunConfig,
    run_dir: str | Path,
    stages: Sequence[str],
    *,
    share_from: str | Path | None = None,
    shared: Sequence[str] = (),
    resume: bool = True,
    model: LoadedModel | None = None,
    progress: Progress | None = None,
    overlap: bool = False,
    on_done: OnDone | None = None,
    lock: bool = True,
) -> RunContext:
    """A run that a run starts: the PLT's stages in ``<run>/plt/``, each extra CLT seed in
    ``<run>/seeds/clt-seed<s>/``, the plt worker's stage in its parent's folder.

    ``shared``: stage folders of ``share_from`` (the parent run) linked into ``run_dir`` and
    resumed there as finished stages (computed once, the same for every sub-run). ``lock``: off
    for a sub-run in its parent's own folder (the worker process; the parent holds the lock).
    """
    if share_from is not None:
        link_shared(share_from, run_dir, shared)
    return run_pipeline(
        cfg,
        run_dir,
        list(stages),
        resume=resume,
        progress=progress or (lambda line: None),
        model=model,
        overlap=overlap,
        on_done=on_done,
        lock=lock,
    )


def link_shared(run_dir: str | Path, sub_dir: str | Path, stages: Iterable[str]) -> None:
    """Relative symlinks ``sub_dir/<stage>`` -> ``run_dir/<stage>`` (stale links replaced, real
    folders of the sub-run left alone): the sub-run resumes them as finished stages."""
    sub_dir = Path(sub_dir)
    sub_dir.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        link = sub_dir / stage
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            continue
        link.symlink_to(os.path.relpath(Path(run_dir) / stage, sub_dir), target_is_directory=True)
