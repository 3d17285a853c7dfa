"""Adapters from the pipeline's ``RunContext`` to each stage's own entry point.

Each adapter runs one stage into ``ctx.run_dir`` and returns the flat dict of headline numbers that
the pipeline records in ``<stage>/stage.json`` (and the report and the regression check read).
"""

from __future__ import annotations

from typing import Any

from clt_bench.pipeline import RunContext


def _numbers(d: dict[str, Any], keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The scalar entries of ``d`` (only ``keys`` when given)."""
    names = d if keys is None else [k for k in keys if k in d]
    return {k: d[k] for k in names if isinstance(d[k], int | float | str | bool)}


def task(ctx: RunContext) -> dict[str, Any]:
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


def baseline(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.baseline.stage import run_baseline_stage

    return _numbers(run_baseline_stage(ctx.cfg, ctx.model, ctx.run_dir))


def activations(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.activations.stage import run_activations_stage

    return _numbers(run_activations_stage(ctx.cfg, ctx.model, ctx.run_dir))


def clt(ctx: RunContext) -> dict[str, Any]:
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


def graphs(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.clt.io import load_clt
    from clt_bench.graphs.stage import run_graphs_stage
    from clt_bench.task.stage import load_task_batch

    clt_model = load_clt(ctx.run_dir / "clt", ctx.model.device)
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


def features(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.features.stage import run_features_stage

    return run_features_stage(ctx.cfg, ctx.model, ctx.run_dir)


def plt(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.plt.stage import run_plt_stage

    return _numbers(run_plt_stage(ctx))


def compare(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.compare.stage import run_compare_stage

    return run_compare_stage(ctx.cfg, ctx.model, ctx.run_dir)


def report(ctx: RunContext) -> dict[str, Any]:
    from clt_bench.report.stage import write_report

    return write_report(ctx)
