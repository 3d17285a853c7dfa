"""``clt-bench run``: every stage (task -> ... -> report) into one folder, resuming finished ones
(:func:`clt_bench.pipeline.run_pipeline`)."""

from __future__ import annotations

import argparse

from clt_bench.cli.common import add_common, command_config, locked


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run", help="run every stage (task -> ... -> report), resuming finished ones"
    )
    add_common(p)
    p.add_argument(
        "--circuit",
        default=None,
        help="baseline circuit: discovered | hanna2023 | acdc | eap_ig | a circuit file "
        "(default: hanna2023 on GPT-2 small, discovered on other models)",
    )
    p.add_argument(
        "--stages", default=None, help="comma-separated subset of stages to run (default: all)"
    )
    p.add_argument("--no-resume", action="store_true", help="recompute finished stages")
    p.add_argument(
        "--yes",
        "--force",
        dest="force",
        action="store_true",
        help="run even when the pre-flight estimate exceeds this machine's memory",
    )
    p.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip the pre-flight (memory and time estimate with a short calibration, before any "
        "stage; also CLT_BENCH_PREFLIGHT=off, or =estimate for no calibration)",
    )
    p.add_argument(
        "--serial",
        action="store_true",
        help="never train the PLT in a second process beside the CLT (by default a CPU run "
        "does when clt.threads + plt.threads fit the cores)",
    )
    p.add_argument(
        "--clt-seeds",
        default=None,
        help="comma-separated CLT seeds (e.g. 0,1,2): one CLT per seed on the same activations, "
        "then <out>/stability/ (features matched across seeds)",
    )
    p.add_argument(
        "--plt-seeds",
        action="store_true",
        help="with --clt-seeds: each seed also trains its own PLT (plt.seed = the seed) instead "
        "of sharing the first run's (what a regression reference needs for PLT seed bands)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clt_bench.models import check_device
    from clt_bench.pipeline import run_pipeline
    from clt_bench.preflight import run_preflight

    cfg, out = command_config(args)
    check_device(cfg.model.device)  # before any stage starts
    with locked(out):  # one run per folder, for all the seeds' runs and the report together
        stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
        if args.clt_seeds:  # the stability stage trains the further seeds
            from clt_bench.stability.seeds import seeds_config

            cfg = seeds_config(cfg, _seeds(args.clt_seeds), plt_seeds=args.plt_seeds)
        elif args.plt_seeds:
            from clt_bench.errors import UserError

            raise UserError("--plt-seeds goes with --clt-seeds (a list of seeds).")
        loaded = run_preflight(  # refuses a run that does not fit (exit 2), unless --yes
            cfg,
            out,
            stages,
            resume=not args.no_resume,
            overlap=not args.serial,
            force=args.force,
            mode="off" if args.no_preflight else None,
        )
        ctx = run_pipeline(
            cfg,
            out,
            stages=stages,
            resume=not args.no_resume,
            overlap=not args.serial,
            model=loaded,
        )
        report = out / "report.html"
        if "report" in ctx.results:
            from clt_bench.report.headline import headline_table
            from clt_bench.report.task_words import task_words_or_default

            print(headline_table(ctx.results["report"], task_words_or_default(ctx.cfg)))
            from clt_bench.report.sanity import check_task

            sanity = check_task(ctx.results["report"].get("headline", {}))
            if not sanity.ok:
                print(f"warning: {sanity.message}")
        if report.is_file():
            print(f"report: {report}")
        print(f"results: {out}")
        return 0


def _seeds(text: str) -> list[int]:
    from clt_bench.errors import UserError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--clt-seeds must be comma-separated integers, got '{text}'.") from None
