"""Argument handling every ``clt-bench`` command shares, written once: the config (preset,
``--set`` overrides, model, device, task, template), the run folder, the model and the folder's
lock."""

from __future__ import annotations

import argparse
import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from clt_bench.config import RunConfig, load_config, parse_override
from clt_bench.errors import UserError
from clt_bench.models import LoadedModel


def add_common(p: argparse.ArgumentParser, model: bool = True, out: bool = True) -> None:
    """Options every stage command shares: preset, overrides, model, device, output folder."""
    p.add_argument(
        "--preset",
        default=None,
        help="preset name or path to a .toml (default: planted; with --model, the model's own "
        "preset where there is one, else toy)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set clt.n_features=2048 (repeatable)",
    )
    if model:
        p.add_argument(
            "--model",
            default=None,
            help="planted | toy | gpt2 | gpt2-random | hf:<name> (default: the preset's)",
        )
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N")
    p.add_argument(
        "--task",
        default=None,
        help="task name under tasks/ (default greater_than), a task directory or a task.toml",
    )
    p.add_argument(
        "--template",
        default=None,
        help="template or family of the task file (default: the task file's default_template)",
    )
    if out:
        p.add_argument("--out", default=None, help="run directory (default: results/<preset>)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    for flag, key in (("model", "model.name"), ("device", "model.device")):
        value = getattr(args, flag, None)
        if not value:
            continue
        for text in args.overrides:  # a flag and a --set of the same key must agree
            path, other = parse_override(text)
            if ".".join(path) == key and other != value:
                raise UserError(
                    f"--{flag} {value} conflicts with --set {key}={other}; give only one of them."
                )
        overrides.append(f'{key}="{value}"')
    if getattr(args, "task", None):
        from clt_bench.paths import tasks_dir
        from clt_bench.task.spec import load_task

        # a task given as a path is stored absolute, so a resumed run finds it from anywhere
        task_path = load_task(args.task).path
        named = task_path.parent == tasks_dir() / args.task
        where = args.task if named else str(task_path.resolve())
        overrides.append(f"task.task={json.dumps(where)}")
    if getattr(args, "template", None):
        overrides.append(f"task.template={json.dumps(args.template)}")
    if getattr(args, "circuit", None):  # run and baseline: --circuit NAME
        overrides.append(f"baseline.circuit={json.dumps(args.circuit)}")
    return load_config(default_preset(args), overrides)


# embedded models whose preset carries their name: ``--model planted`` runs the planted preset
# (GPT-2 keeps the toy preset's sizes unless ``--preset gpt2`` / ``gpt2-cpu`` is asked for: which
# one depends on the machine, so it is never chosen for the user)
MODEL_PRESETS = ("toy", "planted")
# with neither --preset nor --model: the planted model, whose greater-than circuit is known by
# construction (README, "The planted model": why it is the default)
DEFAULT_PRESET = "planted"


def default_preset(args: argparse.Namespace) -> str:
    """``--preset``, else the preset of an embedded ``--model`` (``MODEL_PRESETS``), else ``toy``
    for any other model (its sizes), else ``DEFAULT_PRESET``."""
    preset: str | None = getattr(args, "preset", None)
    if preset:
        return preset
    model: str | None = getattr(args, "model", None)
    if not model:
        return DEFAULT_PRESET
    return model if model in MODEL_PRESETS else "toy"


def command_config(args: argparse.Namespace, *extra: str) -> tuple[RunConfig, Path]:
    """The command's config (``extra``: overrides its own flags add) and run folder."""
    args.overrides = [*args.overrides, *extra]
    cfg = config_from_args(args)
    return cfg, Path(args.out or f"results/{cfg.preset}")


def load_run_model(cfg: RunConfig, device: str | None = None) -> LoadedModel:
    """The config's model (on ``device``, default ``model.device``)."""
    from clt_bench.models import load_model

    m = cfg.model
    return load_model(m.name, device or m.device, m.dtype, m.seed)


def locked(out: Path, hold: bool = True) -> AbstractContextManager[object]:
    """One run per results folder (``runlock``): a second one ends with one sentence."""
    from clt_bench.runlock import run_lock

    return run_lock(out) if hold else nullcontext()
