"""``clt-bench baseline``: find or load the greater-than circuit and evaluate it."""

from __future__ import annotations

import argparse

from clt_bench.cli.common import add_common, command_config, load_run_model, locked


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    from clt_bench.baseline.stage import format_baseline_table, load_baseline_summary
    from clt_bench.pipeline import run_pipeline

    cfg, out = command_config(args)  # --circuit: baseline.circuit
    if cfg.baseline.circuit != "discovered":
        load_circuit(cfg.baseline.circuit)  # bad names fail before the model loads
    loaded = load_run_model(cfg)
    with locked(out):  # the baseline stage through the runner (resumed when finished)
        run_pipeline(cfg, out, ["baseline"], resume=args.resume, model=loaded, lock=False)
    print(format_baseline_table(load_baseline_summary(out)))
    print(f"wrote {out / 'baseline'}")
    return 0


__all__ = ["register"]
