"""``clt-bench task``: evaluate a model on the run's task (``--task``, default greater_than)."""

from __future__ import annotations

import argparse

from clt_bench.cli.common import add_common, command_config, load_run_model, locked


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("task", help="evaluate a model on the task: PD, CS, corrupted PD, heatmap")
    add_common(p)
    p.add_argument("--dataset", default=None, help="discovery (490) | headline (10,000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clt_bench.task.dataset import check_task_tokens
    from clt_bench.task.spec import load_task
    from clt_bench.task.stage import format_task_table, run_task_stage

    cfg, out = command_config(args, *([f'task.dataset="{args.dataset}"'] if args.dataset else []))
    spec = load_task(cfg.task.task)  # bad task or template names fail before the model loads
    spec.template(cfg.task.template or spec.default_template)
    loaded = load_run_model(cfg)
    check_task_tokens(spec, loaded.tokenizer)  # multi-token nouns: one sentence, before the stage
    with locked(out):
        metrics = run_task_stage(cfg, loaded, out)
    print(format_task_table(metrics))
    if cfg.task.family_n > 0:
        print(
            f"wrote {out / 'task' / 'families.csv'} (every template and family, "
            f"n={cfg.task.family_n} each)"
        )
    print(f"wrote {out / 'task' / 'metrics.json'}")
    return 0


__all__ = ["register"]
