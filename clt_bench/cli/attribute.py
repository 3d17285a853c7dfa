"""``clt-bench attribute``: the attribution graph of one prompt, with scores, JSON and PNG."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from clt_bench.cli.common import add_common, config_from_args, load_run_model

if TYPE_CHECKING:
    import torch

    from clt_bench.clt.model import CrossLayerTranscoder
    from clt_bench.models import LoadedModel


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "attribute",
        help="attribution graph of one prompt: completeness and "
        "replacement scores, target split, top features; graph JSON + PNG",
    )
    add_common(p, out=False)
    p.add_argument(
        "--clt",
        required=True,
        help="circuit-tracer CLT directory, or random[:FEATURES] for a seeded random "
        "CLT baseline calibrated on the prompt",
    )
    p.add_argument(
        "--prompt",
        default=None,
        help="prompt text (default: graphs.prompt, else the task's graph prompt)",
    )
    p.add_argument(
        "--target",
        nargs="+",
        default=None,
        help="task (the task's relation) | greater-than | logits | answers | one or more token "
        "strings",
    )
    p.add_argument(
        "--out", default=None, help="graph JSON path (default: results/<preset>/graphs/<slug>.json)"
    )
    p.add_argument("--node-threshold", type=float, default=None)
    p.add_argument("--edge-threshold", type=float, default=None)
    p.add_argument("--max-features", type=int, default=None, help="max feature nodes")
    p.add_argument("--batch-size", type=int, default=None, help="rows per backward pass")
    p.add_argument(
        "--intervene",
        action="append",
        default=[],
        metavar="L:POS:FEAT=VALUE",
        help="also patch a feature (value, x0 or x-1), constrained and free; repeatable",
    )
    p.set_defaults(func=run)


def load_clt_arg(
    spec: str, loaded: LoadedModel, prompt_tokens: torch.Tensor, seed: int = 0
) -> CrossLayerTranscoder:
    """A CLT from a directory, or ``random[:F]`` (calibrated on the prompt's activations)."""
    from clt_bench.errors import UserError

    if spec.startswith("random"):
        import torch

        from clt_bench.graphs.random_clt import random_clt

        try:
            n_feat = int(spec.split(":", 1)[1]) if ":" in spec else 1024
        except ValueError as err:
            raise UserError(f"--clt {spec}: the feature count must be an integer.") from err
        L = loaded.n_layers
        names = [f"blocks.{i}.hook_resid_mid" for i in range(L)]
        _, cache = loaded.bridge.run_with_cache(
            prompt_tokens[None].to(loaded.device), names_filter=names
        )
        x = torch.stack([cache[n][0] for n in names], 1).cpu()  # random_clt draws on the CPU
        return random_clt(
            L, loaded.d_model, n_feat, seed=seed, calibrate_on=x, rate=0.05, dtype=x.dtype
        )
    from clt_bench.clt.circuit_tracer_io import check_fits, load_clt

    if not Path(spec).exists():
        raise UserError(
            f"the CLT directory {spec} does not exist (train one with "
            f"`clt-bench train-clt`, or use --clt random:1024)."
        )
    clt = load_clt(spec)
    check_fits(clt, loaded.n_layers, loaded.d_model, spec)
    return clt


TASK_TARGETS = ("task", "greater-than")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from clt_bench.errors import UserError
    from clt_bench.graphs.build import build_graph, check_context
    from clt_bench.graphs.interventions import constrained_patch, free_patch, parse_intervention
    from clt_bench.graphs.local_replacement import build_replacement
    from clt_bench.graphs.prompt import task_graph_prompt
    from clt_bench.graphs.stage import format_graph_report, slugify, write_graph_outputs
    from clt_bench.graphs.targets import directions, parse_yy
    from clt_bench.task.spec import load_task

    cfg = config_from_args(args)
    changes = {
        k: v
        for k, v in {
            "prompt": args.prompt,
            "node_threshold": args.node_threshold,
            "edge_threshold": args.edge_threshold,
            "max_feature_nodes": args.max_features,
            "batch_size": args.batch_size,
        }.items()
        if v is not None
    }
    flags = SimpleNamespace(**{**vars(cfg.graphs), **changes})  # flags checked by name first
    if not 0.0 < flags.node_threshold <= 1.0 or not 0.0 < flags.edge_threshold <= 1.0:
        raise UserError("--node-threshold and --edge-threshold must be in (0, 1].")
    if flags.batch_size < 1 or flags.max_feature_nodes < 0:
        raise UserError("--batch-size must be >= 1 and --max-features >= 0.")
    gcfg = replace(cfg.graphs, **changes)
    interventions = [parse_intervention(t) for t in args.intervene]
    target = list(args.target) if args.target else gcfg.target
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("the prompt is empty.")
    if target in (*TASK_TARGETS, *([t] for t in TASK_TARGETS)) and gcfg.prompt.strip():
        parse_yy(gcfg.prompt)  # the task's target needs a year in the prompt
    spec = load_task(cfg.task.task)
    loaded = load_run_model(cfg)
    # no --prompt / graphs.prompt: the task's own graph prompt (clt_bench.graphs.prompt)
    gp = task_graph_prompt(spec, loaded.tokenizer, gcfg.prompt, gcfg.prepend_bos)
    tokens, prompt = gp.tokens, gp.text
    check_context(loaded, tokens)
    clt = load_clt_arg(args.clt, loaded, tokens, seed=cfg.clt.seed).to(loaded.device)
    graph = build_graph(loaded, clt, tokens, target, gcfg, gp.target)
    graph.prompt = prompt
    bos = loaded.tokenizer.bos_token or ""
    name = slugify(prompt[len(bos) :].lstrip() if bos and prompt.startswith(bos) else prompt)
    out = Path(args.out or f"results/{cfg.preset}/graphs/{name}.json")
    paths = write_graph_outputs(graph, out, scan=f"{loaded.name}-clt")
    print(format_graph_report(graph, gcfg.top_features))
    print(
        f"graph built in {graph.meta['wall_seconds']:.2f} s "
        f"({graph.meta['n_backward_passes']} batched backward passes)"
    )
    if interventions:
        rm = build_replacement(loaded.bridge, clt, tokens)
        D = directions(graph.targets)
        c = constrained_patch(rm, interventions, D)
        f = free_patch(loaded.bridge, clt, tokens, interventions, D)
        for j, t in enumerate(graph.targets[:10]):
            print(
                f"intervention on {t.label!r}: constrained {float(c.delta[j]):+.4f}, "
                f"free {float(f.delta[j]):+.4f}"
            )
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


__all__ = ["register"]
