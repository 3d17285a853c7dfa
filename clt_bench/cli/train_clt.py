"""``clt-bench train-clt``: train (or load) a CLT and score it; also under torchrun."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from clt_bench.cli.common import add_common, command_config, load_run_model, locked
from clt_bench.config import RunConfig
from clt_bench.models import LoadedModel


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train-clt", help="train a cross-layer transcoder (or PLT) and score it")
    add_common(p)
    p.add_argument("--load", default=None, help="score an existing circuit-tracer CLT directory")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="recompute even if <out>/clt/metrics.json matches the config",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clt_bench.clt import distributed as D
    from clt_bench.clt.stage import format_clt_table, set_threads
    from clt_bench.models import check_device

    # scoring a loaded CLT needs only the held-out rows: no training shards
    load = [f'clt.load="{args.load}"', 'activations.mode="stream"'] if args.load else []
    cfg, out = command_config(args, *load)
    check_device(cfg.model.device)
    preflight(cfg)
    set_threads(cfg.clt.threads)
    info = D.setup(cfg.model.device)
    device = D.local_device(cfg.model.device, info)
    loaded = load_run_model(cfg, device)
    try:
        # one run per results folder (rank 0 holds the lock under torchrun); the temp files of
        # a killed earlier attempt are removed under it
        with locked(out, hold=info.is_main):
            metrics = _train(cfg, loaded, out, info, resume=not args.no_resume)
    finally:
        D.teardown(info)
    if info.is_main:
        print(format_clt_table(metrics))
        print(f"wrote {out / 'clt'}")
    return 0


def _train(
    cfg: RunConfig, loaded: LoadedModel, out: Path, info: Any, resume: bool
) -> dict[str, Any]:
    """The activations and clt stages into ``out``: through the runner (resumed when finished);
    under torchrun every rank computes its share of both, without resume."""
    from clt_bench.activations.stage import run_activations_stage
    from clt_bench.clt.stage import run_clt_stage
    from clt_bench.io import read_json
    from clt_bench.pipeline import run_pipeline

    if info.enabled:
        run_activations_stage(cfg, loaded, out)
        return run_clt_stage(cfg, loaded, out)
    stages = ["activations", "clt"]
    run_pipeline(cfg, out, stages, resume=resume, model=loaded, lock=False)
    metrics: dict[str, Any] = read_json(out / "clt" / "metrics.json")
    return metrics


def preflight(cfg: RunConfig) -> None:
    """Fail fast, before loading the model: a bad CLT checkpoint or an empty corpus."""
    from clt_bench.activations.corpus import iter_documents
    from clt_bench.clt.circuit_tracer_io import load_clt
    from clt_bench.errors import UserError

    if cfg.clt.load:
        load_clt(cfg.clt.load)
        return
    a = cfg.activations
    if next(iter(iter_documents(a.corpus, a.seed, a.text_field, a.split)), None) is None:
        raise UserError(f"corpus '{a.corpus}' yields no tokens.")


__all__ = ["register"]
