"""The plt stage: per-layer transcoders trained on the run's activations, scored like the CLT.

``<run>/plt/`` is a sub-run (docs/architecture.md, "Sub-runs") that runs the ``clt``, ``graphs``
and ``features`` stages with the ``[plt]`` section in place of ``[clt]``. By default the CLT and
the PLT have the same number of features per layer, not the same L0: the comparison is "equal
dictionary size".
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from clt_bench.config import CLTConfig, RunConfig
from clt_bench.errors import UserError


def plt_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the ``[plt]`` section as its ``[clt]`` section."""
    if cfg.plt.kind != "plt":
        raise UserError(f"plt.kind must be 'plt' (got '{cfg.plt.kind}'); use [clt] for a CLT.")
    clt = CLTConfig(**{f.name: getattr(cfg.plt, f.name) for f in fields(CLTConfig)})
    return replace(cfg, clt=clt)


def plt_summary(results: dict[str, dict[str, Any]], stages: tuple[str, ...]) -> dict[str, Any]:
    """The sub-run's scalar numbers, the first stage's value for a name several stages give."""
    summary: dict[str, Any] = {}
    for stage in stages:
        for k, v in results.get(stage, {}).items():
            if isinstance(v, int | float | str | bool) and k not in summary:
                summary[k] = v
    return summary
