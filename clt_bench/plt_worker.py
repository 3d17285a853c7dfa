"""Run the baseline and plt stages in a second process while the main one trains the CLT.

The PLT reads only the run's task, baseline and activations, so on a CPU machine with two or more
cores a ``spawn`` worker runs the baseline and then the PLT (``WORKER_STAGES``) beside the CLT's
training, with its share of the cores (``worker_threads``), as docs/architecture.md ("Sub-runs")
describes. The worker loads its own model, logs to ``<run>/plt-worker.log``, reports each finished
stage to the main process and exits within a second of the main process's death.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clt_bench import threads
from clt_bench.config import RunConfig
from clt_bench.errors import UserError

# The stages a worker runs, in order (any stages whose inputs are met). The baseline is one: on the
# planted model (the default) the CLT branch (clt, graphs, features) is ~25 s longer than the PLT
# worker's, so the baseline (~18 s on 1 thread) fits beside it and leaves the critical path; the
# main process waits for it before the features stage (benchmarks/RESULTS.md, "Round 12").
WORKER_STAGES: tuple[str, ...] = ("baseline", "plt")
LOG_NAME = "plt-worker.log"
available_cores = threads.available_cores  # (tests monkeypatch it)

# the runner's ``run_subrun`` (passed in: this module does not import the runner)
RunStages = Callable[..., Any]


def worker_stages() -> tuple[str, ...]:
    """``WORKER_STAGES``, read when a run starts (tests swap it)."""
    return WORKER_STAGES


def can_overlap(cfg: RunConfig, names: list[str]) -> bool:
    """Whether this run trains the PLT beside the CLT: both stages run, on the CPU, on a machine
    with the cores for both (explicit ``clt.threads`` / ``plt.threads`` must fit together)."""
    c, p = cfg.clt, cfg.plt
    cores = available_cores()
    return (
        "plt" in names
        and "clt" in names
        and p.enabled
        and not str(cfg.model.device).startswith("cuda")
        and cores >= 2
        and (c.threads or 1) + (p.threads or 1) <= cores
    )


def worker_threads(cfg: RunConfig) -> int:
    """The worker's share of the run's threads: ``plt.threads`` if set, else half of them."""
    return cfg.plt.threads or max(1, threads.total() // 2)


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # re-parented: the main process is gone
            os._exit(3)


def _worker(
    cfg: RunConfig,
    run_dir: str,
    plan: list[tuple[str, bool]],
    parent: int,
    n_threads: int,
    done: mp.SimpleQueue[tuple[str, bool]],
    run_subrun: RunStages,
) -> None:
    log = open(Path(run_dir) / LOG_NAME, "w", buffering=1)  # noqa: SIM115 (lives with the process)
    sys.stdout = sys.stderr = log
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    threads.set_budget(n_threads)
    forced = False  # a stage recomputed here makes the ones after it stale
    model = None
    try:
        for stage, may_resume in plan:
            recomputed: list[bool] = []
            ctx = run_subrun(
                cfg,
                run_dir,
                [stage],
                resume=may_resume and not forced,
                progress=print,
                model=model,
                on_done=lambda s, r, rec=recomputed: rec.append(r),
                lock=False,  # the parent holds the run's lock
            )
            model = ctx._model  # loaded once for all the worker's stages
            forced = forced or any(recomputed)
            done.put((stage, any(recomputed)))
    except UserError as err:
        print(f"error: {err}", flush=True)
        sys.exit(2)


class StageWorker:
    """``stages`` running in a spawned process (``start`` on construction); ``wait(stage)``
    blocks until that stage is finished there."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        plan: list[tuple[str, bool]],
        run_subrun: RunStages,
    ) -> None:
        """``plan``: (stage, may it resume) in the order the worker runs them; ``run_subrun``:
        the runner's entry point, which the worker calls for each stage."""
        self.run_dir = Path(run_dir)
        self.stages = [s for s, _ in plan]
        self.finished: dict[str, bool] = {}  # stage -> recomputed
        self.threads = worker_threads(cfg)
        ctx = mp.get_context("spawn")
        self._done = ctx.SimpleQueue()
        self.proc = ctx.Process(
            target=_worker,
            args=(cfg, str(run_dir), plan, os.getpid(), self.threads, self._done, run_subrun),
            name="clt-bench-" + "-".join(self.stages),
        )
        self.proc.start()
        # the main process keeps the rest of the run's threads while the worker runs
        threads.set_budget(max(1, threads.total() - self.threads))

    @property
    def all_done(self) -> bool:
        return set(self.finished) >= set(self.stages)

    def _drain(self) -> None:
        while not self._done.empty():
            stage, recomputed = self._done.get()
            self.finished[stage] = recomputed

    def wait(self, stage: str) -> bool:
        """Block until ``stage`` is finished in the worker; whether it was recomputed there. A
        failed worker ends the run with one sentence. When every stage is done, the main process
        gets all the threads back."""
        while True:
            ended = not self.proc.is_alive()  # before draining: a last report is not missed
            self._drain()
            if stage in self.finished:
                break
            if ended:
                self._fail()
            time.sleep(0.05)
        if self.all_done:
            self.proc.join()
            if self.proc.exitcode != 0:
                self._fail()
            threads.set_budget(None)
        return self.finished[stage]

    def _fail(self) -> None:
        self.proc.join()
        threads.set_budget(None)
        log = self.run_dir / LOG_NAME
        text = log.read_text(errors="replace") if log.is_file() else ""
        tail = text.strip().splitlines()[-1:]
        why = f" ({tail[0].strip()})" if tail else ""
        raise UserError(
            f"the {' and '.join(self.stages)} stage(s) failed in their worker process with "
            f"exit code {self.proc.exitcode}{why}; its log is {log}."
        )

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        threads.set_budget(None)
