"""The plt stage: per-layer transcoders trained on the run's activations, scored like the CLT.

``<run>/plt/`` is a sub-run: its ``task``, ``baseline`` and ``activations`` are links to the
run's own, and the pipeline's ``clt``, ``graphs`` and ``features`` stages run there with the
``[plt]`` config section in place of ``[clt]`` (so the PLT can have its own size and sparsity).
The PLT weights land in ``<run>/plt/clt/`` (circuit-tracer's transcoder-set layout), its graph in
``<run>/plt/graphs/`` and its top features in ``<run>/plt/features/``; the compare stage then sets
CLT, PLT and neurons side by side.

By default the toy's CLT and PLT have the same number of features per layer (so the same total
number of features), not the same L0: the comparison is "equal dictionary size".
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from clt_bench.config import CLTConfig, RunConfig
from clt_bench.errors import UserError
from clt_bench.subrun import link_shared

# the stages the PLT sub-run computes itself; the others are links to the run's own
OWN_STAGES = ("clt", "graphs", "features")
SHARED_STAGES = ("task", "baseline", "activations")


def plt_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the ``[plt]`` section as its ``[clt]`` section."""
    if cfg.plt.kind != "plt":
        raise UserError(f"plt.kind must be 'plt' (got '{cfg.plt.kind}'); use [clt] for a CLT.")
    clt = CLTConfig(**{f.name: getattr(cfg.plt, f.name) for f in fields(CLTConfig)})
    return replace(cfg, clt=clt)


def run_plt_stage(ctx: Any) -> dict[str, Any]:
    """Train and score the PLT in ``<run>/plt``; returns its headline numbers."""
    from clt_bench.pipeline import RunContext, run_pipeline

    if not ctx.cfg.plt.enabled:
        return {"enabled": False}
    sub = Path(ctx.run_dir) / "plt"
    link_shared(ctx.run_dir, sub, SHARED_STAGES)
    sub_ctx: RunContext = run_pipeline(
        plt_config(ctx.cfg),
        sub,
        stages=list(OWN_STAGES),
        resume=True,
        progress=lambda s: None,
        model=ctx.model,
    )
    summary: dict[str, Any] = {}
    for stage in OWN_STAGES:
        for k, v in sub_ctx.results.get(stage, {}).items():
            if isinstance(v, int | float | str | bool) and k not in summary:
                summary[k] = v
    return summary
