"""The stability stage: the run's CLT seed and further ones, sharing the seed-independent stages.

``stability.clt_seeds`` (``clt-bench run --clt-seeds 0,1,2``) names them; the first is the run's
own ``clt.seed`` (``seeds_config``). Each further seed runs as a sub-run in
``<run>/seeds/clt-seed<s>/`` (docs/architecture.md, "Sub-runs"); then ``summary.write_stability``
writes ``<run>/stability/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clt_bench.config import RunConfig, with_section
from clt_bench.errors import UserError
from clt_bench.run_context import RunContext
from clt_bench.stability.summary import write_stability


def seeds_config(cfg: RunConfig, seeds: list[int], plt_seeds: bool = False) -> RunConfig:
    """``cfg`` for a run over the CLT ``seeds``: its own CLT (and PLT) seed is the first."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise UserError("seeds must name at least two different CLT seeds.")
    out = with_section(cfg, "stability", clt_seeds=tuple(seeds), plt_seeds=plt_seeds)
    return seeded(out, seeds[0])


def seeded(cfg: RunConfig, seed: int) -> RunConfig:
    """``cfg`` with CLT seed ``seed`` (and PLT seed, under ``stability.plt_seeds``)."""
    out = with_section(cfg, "clt", seed=seed)
    return with_section(out, "plt", seed=seed) if cfg.stability.plt_seeds else out


def run_stability_stage(ctx: RunContext, shared: list[str], own: list[str]) -> dict[str, Any]:
    """Run every further seed as a sub-run of the ``own`` stages (``shared``: linked from this
    run), then write ``<run>/stability/``."""
    st = ctx.cfg.stability
    seeds = list(st.clt_seeds)
    if ctx.cfg.clt.seed != seeds[0]:
        raise UserError(
            f"stability.clt_seeds starts with {seeds[0]}, but clt.seed is {ctx.cfg.clt.seed}; "
            "the run's own CLT is the first seed."
        )
    assert ctx.run_subrun is not None, "the stability stage runs under the runner"
    dirs = {seeds[0]: ctx.run_dir}
    for seed in seeds[1:]:
        d = Path(ctx.run_dir) / "seeds" / f"clt-seed{seed}"
        ctx.progress(f"CLT seed {seed} -> {d}")
        # each seed's run gets its own report too, so that it is a complete run for
        # ``clt-bench check`` / ``make-reference`` / ``compare-runs``; it has no seeds of its own
        one = with_section(seeded(ctx.cfg, seed), "stability", clt_seeds=())
        ctx.run_subrun(
            one,
            d,
            own,
            share_from=ctx.run_dir,
            shared=shared,
            model=ctx.model,
            progress=ctx.progress,
            overlap=ctx.overlap,
        )
        dirs[seed] = d
    ctx.progress("stability across seeds ...")
    summary = write_stability(dirs, ctx.stage_dir("stability"), threshold=st.threshold)
    ctx.progress(
        f"stable features (mean over seeds): {summary['stable_mean']:.1f} of "
        f"{summary['n_top']}, carrying {summary['stable_influence_share_mean']:.1%} "
        "of the top features' influence"
    )
    return {"enabled": True}
