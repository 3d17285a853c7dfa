"""``clt-bench baseline``: find or load the greater-than circuit and evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from clt_bench.cli import add_common

    p = sub.add_parser(
        "baseline",
        help="the known circuit: discover or load it; faithfulness, "
        "necessity, random control, neuron analysis",
    )
    add_common(p)
    p.add_argument(
        "--circuit",
        default=None,
        help="discovered | hanna2023 | acdc | eap_ig | path to a circuit .json/.toml",
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="recompute even if the stage's outputs are up to date",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clt_bench.baseline.circuits import load_circuit
    from clt_bench.baseline.stage import format_baseline_table
    from clt_bench.cli import config_from_args, out_dir
    from clt_bench.models import load_model

    if args.circuit:
        args.overrides = [*args.overrides, f'baseline.circuit="{args.circuit}"']
    cfg = config_from_args(args)
    if cfg.baseline.circuit != "discovered":
        load_circuit(cfg.baseline.circuit)  # bad names fail before the model loads
    loaded = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype, cfg.model.seed)
    out = Path(out_dir(args, cfg))
    from clt_bench.runlock import run_lock

    with run_lock(out):  # one run per results folder
        summary = _run_stages(cfg, loaded, out, args.resume)
    print(format_baseline_table(summary))
    print(f"wrote {out / 'baseline'}")
    return 0


def _run_stages(cfg, loaded, out: Path, resume: bool) -> dict:
    """The baseline stage through the runner (resumed when finished); its full summary."""
    from clt_bench.baseline.stage import load_baseline_summary
    from clt_bench.pipeline import run_pipeline

    run_pipeline(cfg, out, ["baseline"], resume=resume, model=loaded, lock=False)
    return load_baseline_summary(out)


__all__ = ["register"]
