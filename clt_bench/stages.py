"""Every stage of the pipeline, declared once: what it depends on, reads, writes and runs.

``STAGES`` lists them in run order, each a :class:`Stage` (docs/architecture.md, "Stages"). A
``run`` function gets the :class:`RunContext` and returns the flat dict of headline numbers that
the runner (:mod:`clt_bench.pipeline`) records in ``<run>/<name>/stage.json``; resume, hashing
and timing are the runner's alone. A stage that runs other stages in a folder of its own calls
``ctx.run_subrun`` (:func:`clt_bench.pipeline.run_subrun`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clt_bench.run_context import RunContext

StageFn = Callable[[RunContext], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One stage: ``<run>/<name>/`` holds its ``outputs`` and, once finished, ``stage.json``."""

    name: str
    sections: tuple[str, ...]  # config sections its result depends on (the resume hash)
    inputs: tuple[str, ...]  # stages whose outputs it reads (they run, or are done, before it)
    outputs: tuple[str, ...]  # what it always writes into its folder (besides stage.json)
    run: StageFn


def _numbers(d: dict[str, Any], keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The scalar entries of ``d`` (only ``keys`` when given)."""
    names = d if keys is None else [k for k in keys if k in d]
    return {k: d[k] for k in names if isinstance(d[k], int | float | str | bool)}


# --- the run functions: each imports its stage's module when it runs (a cheap ``import``) ------


def run_task(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.task.stage import run_task_stage

    out = run_task_stage(ctx.cfg, ctx.model, ctx.run_dir)
    keys = (
        "prob_diff",
        "cutoff_sharpness",
        "corrupted_prob_diff",
        "logit_diff",
        "n_examples",
        "template",
    )
    return _numbers(out, keys)


def run_baseline(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.baseline.stage import run_baseline_stage

    return _numbers(run_baseline_stage(ctx.cfg, ctx.model, ctx.run_dir))


def run_activations(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.activations.stage import run_activations_stage

    return _numbers(run_activations_stage(ctx.cfg, ctx.model, ctx.run_dir))


def run_clt(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.clt.stage import run_clt_stage

    out = run_clt_stage(ctx.cfg, ctx.model, ctx.run_dir)
    keys = (
        "nmse",
        "l0",
        "dead_fraction",
        "replacement_top1_agreement",
        "kl",
        "ce_loss_recovered",
        "replacement_prob_diff",
        "train_tokens",
        "train_seconds",
        "tokens_per_second",
    )
    return _numbers(out, keys)


def run_graphs(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.clt.circuit_tracer_io import load_run_clt
    from clt_bench.graphs.stage import run_graphs_stage
    from clt_bench.task.stage import load_task_batch

    clt_model = load_run_clt(ctx.run_dir, device=ctx.model.device)
    batch = load_task_batch(ctx.cfg, ctx.model)
    out = run_graphs_stage(ctx.cfg, ctx.model, clt_model, batch, ctx.run_dir)
    summary = _numbers(
        out,
        (
            "prompt",
            "n_tokens",
            "n_active_features",
            "n_nodes_pruned",
            "n_edges_pruned",
            "wall_seconds",
        ),
    )
    for name, value in out.get("scores", {}).items():  # completeness, replacement, pruned_*
        summary[f"{name}_score"] = value
    for where, shares in out.get("influence_share", {}).items():  # YY / END / rest shares
        for cls in ("YY", "END", "rest", "planted_sites"):
            if isinstance(shares, dict) and cls in shares:
                summary[f"influence_share_{cls.lower()}_{where}"] = shares[cls]
    # graph prompts outside the training distribution (a flag for the report, not a number)
    summary["out_of_distribution"] = out.get("out_of_distribution", {})
    return summary


def run_features(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.features.stage import run_features_stage

    return run_features_stage(ctx.cfg, ctx.model, ctx.run_dir)


# the PLT sub-run computes these in <run>/plt/ and links the run's own for the shared ones
PLT_OWN_STAGES = ("clt", "graphs", "features")
PLT_SHARED_STAGES = ("task", "baseline", "activations")


def run_plt(ctx: RunContext) -> dict[str, Any]:
    """Per-layer transcoders: a sub-run in ``<run>/plt/`` with ``[plt]`` as its ``[clt]``."""
    from clt_bench.plt.stage import plt_config, plt_summary

    if not ctx.cfg.plt.enabled:
        return {"enabled": False}
    assert ctx.run_subrun is not None, "the plt stage runs under the runner"
    sub = ctx.run_subrun(
        plt_config(ctx.cfg),
        ctx.run_dir / "plt",
        PLT_OWN_STAGES,
        share_from=ctx.run_dir,
        shared=PLT_SHARED_STAGES,
        model=ctx.model,
    )
    return _numbers(plt_summary(sub.results, PLT_OWN_STAGES))


def run_compare(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.compare.stage import run_compare_stage

    return run_compare_stage(ctx.cfg, ctx.model, ctx.run_dir)


def run_stability(ctx: RunContext) -> dict[str, Any]:
    """``stability.clt_seeds``: a sub-run per further CLT seed, then features matched across
    seeds (``<run>/stability/``); without seeds, nothing."""
    from clt_bench.stability.seeds import run_stability_stage

    if not ctx.cfg.stability.clt_seeds:
        return {"enabled": False}
    plt_own = ctx.cfg.stability.plt_seeds
    # the seed-independent stages (no ``clt`` section) are linked from this run
    shared = [
        s.name
        for s in STAGES
        if "clt" not in s.sections and s.name != "stability" and not (plt_own and s.name == "plt")
    ]
    return run_stability_stage(ctx, shared, [s for s in STAGE_NAMES if s not in shared])


def run_report(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.report.stage import write_report

    return write_report(ctx)


_UP_TO_FEATURES = ("model", "task", "activations", "clt", "graphs")
_UP_TO_COMPARE = ("model", "task", "baseline", "activations", "clt", "plt", "graphs", "features")
_UP_TO_REPORT = (*_UP_TO_COMPARE, "report", "stability")
_ALL_BEFORE_REPORT = (
    "task", "baseline", "activations", "clt", "graphs", "features", "plt", "compare", "stability"
)  # fmt: skip
_CLT_FILES = ("metrics.json", "config.yaml")

STAGES: tuple[Stage, ...] = (
    Stage("task", ("model", "task"), (), ("metrics.json", "per_prompt.safetensors"), run_task),
    Stage(
        "baseline",
        ("model", "task", "baseline"),
        (),  # the task's prompts come from the config (task.stage.load_task_batch)
        ("circuit.json", "faithfulness.json", "neurons.json", "units_needed.csv"),
        run_baseline,
    ),
    Stage(
        "activations",
        ("model", "activations"),
        (),
        ("manifest.json", "heldout.safetensors"),
        run_activations,
    ),
    # the task too: the CLT is scored on the task's prompts (replacement_prob_diff)
    Stage("clt", ("model", "task", "activations", "clt"), ("activations",), _CLT_FILES, run_clt),
    Stage("graphs", _UP_TO_FEATURES, ("task", "clt"), ("scores.json",), run_graphs),
    Stage(
        "features",
        (*_UP_TO_FEATURES, "features"),
        ("task", "baseline", "activations", "clt", "graphs"),
        ("metrics.json", "features.csv", "ranking.json"),
        run_features,
    ),
    Stage(  # writes its sub-run's folders: <run>/plt/{clt,graphs,features}/
        "plt",
        ("model", "task", "baseline", "activations", "plt", "graphs", "features"),
        ("task", "baseline", "activations"),
        (),
        run_plt,
    ),
    Stage(
        "compare",
        _UP_TO_COMPARE,
        ("task", "baseline", "clt", "graphs", "features", "plt"),
        (
            "metrics.json",
            "overlap.csv",
            "units_needed.csv",
            "transcoders.csv",
            "per_prompt.safetensors",
        ),
        run_compare,
    ),
    # with seeds: seeds.csv, labels.csv, ... and <run>/seeds/clt-seed<s>/ (their reports too)
    Stage("stability", _UP_TO_REPORT, ("features", "compare"), (), run_stability),
    # writes <run>/metrics.json, summary.md and report.html (beside the stage folders)
    Stage("report", _UP_TO_REPORT, (*_ALL_BEFORE_REPORT,), (), run_report),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
