"""``clt-bench task``: evaluate a model on the greater-than task."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from clt_bench.cli import add_common

    p = sub.add_parser("task", help="evaluate a model on the task: PD, CS, corrupted PD, heatmap")
    add_common(p)
    p.add_argument("--task", default=None, help="task name under tasks/ (default greater_than)")
    p.add_argument("--dataset", default=None, help="discovery (490) | headline (10,000)")
    p.add_argument("--template", default=None, help="template or family name from the task file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clt_bench.cli import config_from_args, out_dir
    from clt_bench.models import load_model
    from clt_bench.task.spec import load_task
    from clt_bench.task.stage import format_task_table, run_task_stage

    extra = []
    for key in ("task", "dataset", "template"):
        if getattr(args, key):
            extra.append(f'task.{key}="{getattr(args, key)}"')
    args.overrides = list(args.overrides) + extra
    cfg = config_from_args(args)
    load_task(cfg.task.task)  # bad task names fail before the model loads
    loaded = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype, cfg.model.seed)
    out = Path(out_dir(args, cfg))
    metrics = run_task_stage(cfg, loaded, out)
    print(format_task_table(metrics))
    print(f"wrote {out / 'task' / 'metrics.json'}")
    return 0


__all__ = ["register"]
