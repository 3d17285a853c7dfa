"""Benchmark: wall time, CPU time and peak memory of one attribution graph.

Cases (each in a fresh subprocess, so peak RSS is per case):
- toy: the 13-token task prompt on the toy model with its CLT (``--toy-clt DIR``; without one a
  seeded random CLT of the toy preset's size, calibrated on task prompts to ``--l0`` active
  features per token and layer). Without the toy's weights, its architecture with random weights.
- gpt2-random: the same prompt on gpt2-random with a random 12 x 4,096-feature CLT.
- scaling on the toy: prompt length (task prompt repeated / cut) and active features (L0 sweep).

    python benchmarks/bench_graphs.py [--threads 2] [--skip-gpt2] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "The war lasted from the year 1711 to the year 17"


def _load(model: str):
    import torch

    from clt_bench.errors import UserError
    from clt_bench.models import load_model
    from clt_bench.models.sources import LoadedModel, wrap_hf_gpt2
    from clt_bench.models.tokenizer import gpt2_tokenizer

    try:
        return load_model(model), False
    except UserError:
        if model != "toy":
            raise
        from clt_bench.models.toy import build_toy_module

        bridge = wrap_hf_gpt2(build_toy_module(seed=0).eval(), gpt2_tokenizer(), "toy")
        for p in bridge.parameters():
            p.requires_grad_(False)
        torch.manual_seed(0)
        return LoadedModel(name="toy", bridge=bridge, tokenizer=gpt2_tokenizer()), True


def _calibration(loaded, n_prompts: int = 32):
    import torch

    from clt_bench.task.dataset import build_dataset
    from clt_bench.task.spec import load_task

    batch = build_dataset(load_task("greater_than"), loaded.tokenizer, "discovery", n=n_prompts)
    names = [f"blocks.{i}.hook_resid_mid" for i in range(loaded.n_layers)]
    _, cache = loaded.bridge.run_with_cache(batch.clean, names_filter=names)
    return torch.stack([cache[n].reshape(-1, loaded.d_model) for n in names], 1)


def run_case(args: argparse.Namespace) -> dict:
    """One graph; returns timings (run inside a fresh process)."""
    import torch

    torch.set_num_threads(args.threads)
    from clt_bench.config import GraphsConfig, load_config
    from clt_bench.graphs import build_graph
    from clt_bench.graphs.build import prompt_tokens
    from clt_bench.graphs.random_clt import random_clt

    loaded, random_weights = _load(args.model)
    n_feat = args.features or load_config("toy").clt.n_features
    if args.clt:
        from clt_bench.clt.io import load_clt

        clt, clt_kind = load_clt(args.clt), f"trained ({args.clt})"
    else:
        clt = random_clt(
            loaded.n_layers,
            loaded.d_model,
            n_feat,
            calibrate_on=_calibration(loaded),
            rate=args.l0 / n_feat,
            seed=0,
        )
        clt_kind = f"random, calibrated to L0 {args.l0}/layer"
    tokens, _ = prompt_tokens(loaded.tokenizer, PROMPT)
    if args.length:
        tokens = tokens.repeat(args.length // len(tokens) + 1)[: args.length]
    cfg = GraphsConfig(batch_size=args.batch_size, max_feature_nodes=args.max_features)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    build_graph(loaded, clt, tokens[:4], "logits", cfg)  # warm-up (lazy imports, allocator)
    t0, c0 = time.perf_counter(), time.process_time()
    g = build_graph(loaded, clt, tokens, "greater-than" if not args.length else "logits", cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "model": args.model + (" (random weights: toy not trained yet)" if random_weights else ""),
        "clt": f"{clt.spec.n_layers} x {clt.spec.n_features} {clt.spec.activation}, {clt_kind}",
        "threads": args.threads,
        "tokens": int(len(tokens)),
        "active_features": g.n_active,
        "feature_nodes": g.n_features,
        "backward_rows": g.meta["n_backward_rows"],
        "backward_passes": g.meta["n_backward_passes"],
        "batch_size": args.batch_size,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_graph_mb": round(rss0 / 1024, 1),
        "completeness": round(g.scores["completeness"], 4),
        "replacement": round(g.scores["replacement"], 4),
    }


def _spawn(extra: list[str], threads: int) -> dict:
    cmd = [sys.executable, __file__, "--case", "--threads", str(threads), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"args": extra, "error": out.stderr.strip().splitlines()[-1:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="toy")
    p.add_argument("--clt", default="")
    p.add_argument("--toy-clt", default="", help="trained toy CLT directory")
    p.add_argument("--features", type=int, default=0)
    p.add_argument("--l0", type=float, default=16.0, help="random CLT: active per token/layer")
    p.add_argument("--length", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-features", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-gpt2", action="store_true")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return
    toy_clt = ["--clt", args.toy_clt] if args.toy_clt else []
    results = {"toy": _spawn(["--model", "toy", *toy_clt], args.threads)}
    results["toy_length"] = [
        _spawn(["--model", "toy", "--length", str(n), *toy_clt], args.threads)
        for n in (8, 16, 32, 64)
    ]
    results["toy_l0"] = [
        _spawn(["--model", "toy", "--l0", str(l0)], args.threads) for l0 in (4, 16, 64, 128)
    ]
    if not args.skip_gpt2:
        results["gpt2_random"] = _spawn(
            ["--model", "gpt2-random", "--features", "4096"], args.threads
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
