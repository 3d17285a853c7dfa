"""Run the plt stage in a second process while the main one trains and scores the CLT.

The PLT reads only the run's task, baseline and activations (``pipeline.STAGES``), so once those
are finished it can train beside the CLT. On a CPU run where both trainers are pinned to a few
threads (the toy: one each) and the machine has the cores for both, the pipeline starts the plt
stage in a worker process right after the activations and collects it where the plt stage comes
in the stage order; results are the same as a serial run's (each process seeds its own trainer).
The worker is a ``spawn`` process: it loads its own model, writes ``<run>/plt-worker.log``, and
exits within a second if the main process dies (a killed run leaves no orphan writing to it).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

from clt_bench.config import RunConfig
from clt_bench.errors import UserError

# the stages the plt stage's inputs come from (see pipeline.STAGES)
PLT_INPUTS = ("task", "baseline", "activations")
LOG_NAME = "plt-worker.log"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def can_overlap(cfg: RunConfig, names: list[str]) -> bool:
    """Whether this run trains the PLT beside the CLT: both stages run, on the CPU, with explicit
    thread counts that fit the machine's cores together."""
    c, p = cfg.clt, cfg.plt
    return (
        "plt" in names
        and "clt" in names
        and p.enabled
        and not str(cfg.model.device).startswith("cuda")
        and c.threads > 0
        and p.threads > 0
        and c.threads + p.threads <= available_cores()
    )


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # re-parented: the main process is gone
            os._exit(3)


def _worker(cfg: RunConfig, run_dir: str, resume: bool, parent: int) -> None:
    log = open(Path(run_dir) / LOG_NAME, "w", buffering=1)  # noqa: SIM115 (lives with the process)
    sys.stdout = sys.stderr = log
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    from clt_bench.pipeline import run_pipeline

    try:
        run_pipeline(cfg, run_dir, stages=["plt"], resume=resume, progress=print)
    except UserError as err:
        print(f"error: {err}", flush=True)
        sys.exit(2)


class PLTWorker:
    """The plt stage running in a spawned process (``start``), collected with ``wait``."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool) -> None:
        self.run_dir = Path(run_dir)
        ctx = mp.get_context("spawn")
        self.proc = ctx.Process(
            target=_worker, args=(cfg, str(run_dir), resume, os.getpid()), name="clt-bench-plt"
        )
        self.proc.start()

    def wait(self) -> None:
        """Block until the worker ends; a failed worker ends the run with one sentence."""
        self.proc.join()
        if self.proc.exitcode != 0:
            log = self.run_dir / LOG_NAME
            text = log.read_text(errors="replace") if log.is_file() else ""
            tail = text.strip().splitlines()[-1:]
            why = f" ({tail[0].strip()})" if tail else ""
            raise UserError(
                f"the plt stage failed in its worker process with exit code "
                f"{self.proc.exitcode}{why}; its log is {log}."
            )

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
