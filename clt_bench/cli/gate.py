"""``clt-bench check`` (the CI regression gate), ``make-reference`` and ``compare-runs``."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser(
        "check", help="compare a run's metrics.json with a reference (exit 1 if off)"
    )
    c.add_argument("run_dir", help="results/<run> (or its metrics.json)")
    c.add_argument(
        "--reference",
        default=None,
        help="reference file (default: results/reference/<the run's model>.json)",
    )
    c.add_argument(
        "--numbers-only",
        action="store_true",
        help="compare a metrics.json as it is, without making sure its stages are the run's "
        "finished ones (for a metrics.json copied out of its run folder)",
    )
    c.set_defaults(func=check)

    r = sub.add_parser(
        "make-reference",
        help="write a regression reference from runs that differ only in the CLT seed",
    )
    r.add_argument(
        "run_dirs", nargs="+", help="finished runs of one config with different CLT seeds (>= 5)"
    )
    r.add_argument(
        "--variation",
        nargs="+",
        default=[],
        metavar="RUN",
        help="runs of one of those seeds under another thread count or device: they measure the "
        "float tolerance of the deterministic metrics",
    )
    r.add_argument("--out", default=None, help="default: results/reference/<the runs' model>.json")
    r.add_argument(
        "--alpha",
        type=float,
        default=0.01,
        help="false-alarm rate of the whole gate for a run with a new seed (default 0.01)",
    )
    r.add_argument("--min-seeds", type=int, default=5, help="fewest seed runs accepted (default 5)")
    r.add_argument(
        "--det-factor",
        type=float,
        default=3.0,
        help="deterministic metrics: tolerance = this x the spread measured over all runs",
    )
    r.add_argument(
        "--det-abs-tol", type=float, default=1e-6, help="deterministic metrics: absolute floor"
    )
    r.add_argument(
        "--det-rel-tol", type=float, default=1e-6, help="deterministic metrics: relative floor"
    )
    r.set_defaults(func=make_ref)

    cr = sub.add_parser(
        "compare-runs",
        help="any finished runs side by side (bootstrap intervals for means over prompts)",
    )
    cr.add_argument("run_dirs", nargs="+", help="finished runs (results/<run>)")
    cr.add_argument("--out", default=None, help="also write the table to a .md or .html file")
    cr.add_argument("--metrics", default=None, help="comma-separated metrics (default: all)")
    cr.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    cr.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    cr.set_defaults(func=compare_runs_cmd)


def reference_for(run: str) -> str:
    """``results/reference/<model>.json`` for the model of ``run`` (a run folder or its
    metrics.json), the committed references' naming."""
    from clt_bench.errors import UserError
    from clt_bench.io import read_json

    path = Path(run)
    config = (path.parent if path.suffix == ".json" else path) / "config.json"
    if not config.is_file():
        raise UserError(f"no config.json beside {run} to tell its model from; pass --reference.")
    model = str(read_json(config)["model"]["name"])
    return f"results/reference/{model}.json"


def check(args: argparse.Namespace) -> int:
    from clt_bench.report.check import run_check

    reference = args.reference or reference_for(args.run_dir)
    code, text = run_check(args.run_dir, reference, verify_stages=not args.numbers_only)
    print(text)
    return code


def make_ref(args: argparse.Namespace) -> int:
    from clt_bench.io import read_json
    from clt_bench.report.check import check_metrics
    from clt_bench.report.reference_bands import make_reference

    args.out = args.out or reference_for(args.run_dirs[0])
    ref = make_reference(
        args.run_dirs,
        args.out,
        variation_dirs=args.variation,
        alpha=args.alpha,
        min_seeds=args.min_seeds,
        det_factor=args.det_factor,
        det_abs_tol=args.det_abs_tol,
        det_rel_tol=args.det_rel_tol,
    )
    policies = Counter(band["policy"] for band in ref["metrics"].values())
    print(
        f"wrote {args.out}: {len(ref['metrics'])} metrics from {len(args.run_dirs)} seed runs and "
        f"{len(args.variation)} variation runs ("
        + ", ".join(f"{n} {p}" for p, n in sorted(policies.items()))
        + ")"
    )
    code = 0
    for run in [*args.run_dirs, *args.variation]:  # every input run must pass its own reference
        failed = [
            r.metric for r in check_metrics(read_json(Path(run) / "metrics.json"), ref) if not r.ok
        ]
        if failed:
            code = 1
            print(f"warning: {run} falls outside its own reference on {', '.join(failed)}")
    return code


def compare_runs_cmd(args: argparse.Namespace) -> int:
    from clt_bench.errors import UserError
    from clt_bench.report.compare_runs import compare_runs, format_markdown, write_report

    if args.n_boot < 100:
        raise UserError("--n-boot must be at least 100.")
    wanted = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    cmp = compare_runs(args.run_dirs, n_boot=args.n_boot, seed=args.seed, metrics=wanted)
    print(format_markdown(cmp), end="")
    if args.out:
        print(f"report: {write_report(cmp, args.out)}")
    return 0
