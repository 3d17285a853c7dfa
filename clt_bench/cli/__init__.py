"""The ``clt-bench`` command line: every command, one module each in this package.

Bad input raises ``UserError``: printed as one sentence, exit code 2, no traceback. The
arguments every command shares are handled once, in :mod:`clt_bench.cli.common`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from clt_bench.cli import attribute, baseline, gate, run, task, toy_model, train_clt
from clt_bench.cli.common import config_from_args
from clt_bench.errors import UserError

# each module's ``register(subparsers)`` adds its sub-command(s), in this order in ``--help``
COMMANDS = (task, baseline, train_clt, toy_model, attribute, run, gate)

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clt-bench",
        description="Do cross-layer transcoders find the greater-than circuit? Train, attribute, "
        "compare, report.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
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
