"""``clt-bench task``: evaluate a model on the run's task (``--task``, default greater_than)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from clt_bench.cli import add_common

    p = sub.add_parser("task", help="evaluate a model on the task: PD, CS, corrupted PD, heatmap")
    add_common(p)
    p.add_argument("--dataset", default=None, help="discovery (490) | headline (10,000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clt_bench.cli import config_from_args, out_dir
    from clt_bench.models import load_model
    from clt_bench.task.dataset import check_task_tokens
    from clt_bench.task.spec import load_task
    from clt_bench.task.stage import format_task_table, run_task_stage

    if args.dataset:
        args.overrides = [*args.overrides, f'task.dataset="{args.dataset}"']
    cfg = config_from_args(args)
    spec = load_task(cfg.task.task)  # bad task or template names fail before the model loads
    spec.template(cfg.task.template or spec.default_template)
    loaded = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype, cfg.model.seed)
    check_task_tokens(spec, loaded.tokenizer)  # multi-token nouns: one sentence, before the stage
    out = Path(out_dir(args, cfg))
    from clt_bench.runlock import run_lock

    with run_lock(out):  # one run per results folder
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
