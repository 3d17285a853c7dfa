"""How many CPU threads this process's stages use: its share of the machine's cores.

A run owns ``total()`` threads (``OMP_NUM_THREADS``, else the cores it may run on), all of them
unless the plt worker (``clt_bench.plt_worker``) runs beside it and takes its share; every stage
runs at its process's budget (``apply``), and ``clt.threads`` / ``plt.threads`` > 0 overrides it
for the training loop only (``training``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_budget: int | None = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def total() -> int:
    """The threads a run may use in all: ``OMP_NUM_THREADS`` if set, else the available cores."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cores()


def budget() -> int:
    """This process's share now (``total()`` unless ``set_budget`` said otherwise)."""
    return _budget if _budget is not None else total()


def set_budget(n: int | None) -> None:
    """This process's share from now on (None: back to ``total()``); applied to torch at once."""
    global _budget
    _budget = None if n is None else max(1, int(n))
    apply()


def apply() -> int:
    """Set torch's intra-op threads to the budget (a stage's start); returns it."""
    n = budget()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextmanager
def training(threads: int) -> Iterator[int]:
    """A training loop at ``threads`` (> 0: an explicit setting) or the budget (0); the previous
    thread count is restored after it, so the stages that follow run at their budget."""
    before = torch.get_num_threads()
    n = threads if threads > 0 else budget()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
