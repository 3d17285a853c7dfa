"""Run the pipeline for several CLT seeds, sharing the stages that do not depend on the CLT.

The first seed's run is ``run_dir`` itself; seed s runs in ``run_dir/seeds/clt-seed<s>/`` (a
complete run with its own report), whose
seed-independent stage folders (those whose config sections exclude ``clt``: task, baseline,
activations) are relative symlinks to the first run's, so they are computed once and every seed's
CLT is trained on the same activations. Then ``summary.write_stability`` writes
``run_dir/stability/`` and the first run's report is rewritten to include it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clt_bench.config import RunConfig, with_section
from clt_bench.errors import UserError
from clt_bench.pipeline import STAGES, RunContext, run_pipeline
from clt_bench.stability.summary import write_stability
from clt_bench.subrun import link_shared


def seed_independent_stages() -> list[str]:
    """Stages whose result does not depend on the ``clt`` config section."""
    return [s for s, (_, sections) in STAGES.items() if "clt" not in sections]


def seed_run_dir(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / "seeds" / f"clt-seed{seed}"


def run_seeds(
    cfg: RunConfig,
    run_dir: str | Path,
    seeds: list[int],
    stages: list[str] | None = None,
    resume: bool = True,
    threshold: float = 0.9,
    progress: Callable[[str], None] = print,
    plt_seeds: bool = False,
    overlap: bool = False,
) -> RunContext:
    """Run ``stages`` (default: all) once per CLT seed; write ``run_dir/stability``.

    ``plt_seeds``: each seed's run also trains its own PLT with ``plt.seed`` = the seed (by
    default the PLT does not depend on the CLT seed and is shared like the activations); a
    regression reference needs this, or its PLT metrics would have no seed spread.
    """
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise UserError("seeds must name at least two different CLT seeds.")
    run_dir = Path(run_dir)
    names = stages or list(STAGES)
    before_report = [s for s in names if s != "report"]
    shared = [s for s in seed_independent_stages() if not (plt_seeds and s == "plt")]

    def seeded(seed: int) -> RunConfig:
        c = with_section(cfg, "clt", seed=seed)
        return with_section(c, "plt", seed=seed) if plt_seeds else c

    progress(f"CLT seed {seeds[0]} (reference) -> {run_dir}")
    first = run_pipeline(
        seeded(seeds[0]),
        run_dir,
        stages=before_report,
        resume=resume,
        progress=progress,
        overlap=overlap,
    )
    dirs = {seeds[0]: run_dir}
    for seed in seeds[1:]:
        d = seed_run_dir(run_dir, seed)
        link_shared(run_dir, d, shared)
        progress(f"CLT seed {seed} -> {d}")
        # each seed's run gets its own report too, so that it is a complete run for
        # ``clt-bench check`` / ``make-reference`` / ``compare-runs``
        own = [s for s in names if s not in shared]
        run_pipeline(
            seeded(seed),
            d,
            stages=own,
            resume=resume,
            progress=progress,
            model=first.model,
            overlap=overlap,
        )
        dirs[seed] = d
    if "features" in names or (run_dir / "features" / "features.csv").is_file():
        progress("stability across seeds ...")
        summary = write_stability(dirs, run_dir / "stability", threshold=threshold)
        progress(
            f"stable features (mean over seeds): {summary['stable_mean']:.1f} of "
            f"{summary['n_top']}, carrying {summary['stable_influence_share_mean']:.1%} "
            "of the top features' influence"
        )
    cfg0 = seeded(seeds[0])
    if "report" in names:  # recomputed so that it shows the stability section
        return run_pipeline(
            cfg0, run_dir, stages=["report"], resume=False, progress=progress, model=first.model
        )
    return first
