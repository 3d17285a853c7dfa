"""The ``clt-bench`` command line. Each stage registers its own sub-command (see COMMANDS).

Bad input raises ``UserError``: printed as one sentence, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence

from clt_bench.config import RunConfig, load_config, parse_override, preset_names
from clt_bench.errors import UserError

# modules with ``register(subparsers)``; each adds one or more sub-commands
COMMANDS = [
    "clt_bench.task.cli",
    "clt_bench.baseline.cli",
    "clt_bench.clt.cli",
    "clt_bench.models.cli",
    "clt_bench.graphs.cli",
    "clt_bench.report.cli",
]


def add_common(p: argparse.ArgumentParser, model: bool = True, out: bool = True) -> None:
    """Options every stage command shares: preset, overrides, model, device, output folder."""
    p.add_argument(
        "--preset",
        default=None,
        help="preset name or path to a .toml (default: the --model's own preset where there is "
        "one, e.g. planted, else toy)",
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
        p.add_argument("--model", default=None, help="toy | gpt2 | gpt2-random | hf:<name>")
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
        path = load_task(args.task).path
        named = path.parent == tasks_dir() / args.task
        overrides.append(f"task.task={json.dumps(args.task if named else str(path.resolve()))}")
    if getattr(args, "template", None):
        overrides.append(f"task.template={json.dumps(args.template)}")
    if getattr(args, "circuit", None):  # run and baseline: --circuit NAME
        overrides.append(f"baseline.circuit={json.dumps(args.circuit)}")
    return load_config(default_preset(args), overrides)


def default_preset(args: argparse.Namespace) -> str:
    """``--preset``, else the preset named after ``--model`` where one exists (``--model
    planted`` runs the planted preset, sized for the planted model), else ``toy``."""
    preset = getattr(args, "preset", None)
    if preset:
        return preset
    model = getattr(args, "model", None)
    return model if model and model in preset_names() else "toy"


def out_dir(args: argparse.Namespace, cfg: RunConfig) -> str:
    return args.out or f"results/{cfg.preset}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clt-bench",
        description="Do cross-layer transcoders find the greater-than circuit? Train, attribute, "
        "compare, report.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # read-only or full results folder, unreadable input, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}.", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted; finished checkpoints are kept and the next run resumes.", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
