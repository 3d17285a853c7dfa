"""Benchmark the baseline stage: wall time, and how path patching scales with component count.

    python benchmarks/bench_baseline.py                 # the toy (a tiny random model if unbuilt)
    python benchmarks/bench_baseline.py --model tiny --n 100 --json out.json

Reports (1) path patching into one MLP and into the logits for S = 1, 4, 16, all senders (one
batched call each), (2) circuit evaluation for circuits of 1..all nodes, (3) the full stage.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _model(name: str) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    from clt_bench.models import load_model
    from clt_bench.models.sources import LoadedModel, wrap_hf_gpt2
    from clt_bench.models.tokenizer import gpt2_tokenizer
    from clt_bench.models.toy import DEFAULT_TOY_ARCH, TOY_WEIGHTS

    if name == "toy" and TOY_WEIGHTS.is_file():
        return load_model("toy")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**DEFAULT_TOY_ARCH)).eval()
    bridge = wrap_hf_gpt2(hf, gpt2_tokenizer(), "toy-shaped-random")
    for p in bridge.parameters():
        p.requires_grad_(False)
    return LoadedModel("toy-shaped-random", bridge, gpt2_tokenizer())


def _time(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--n", type=int, default=100, help="examples per patched run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-stage", action="store_true")
    args = ap.parse_args()

    from clt_bench.baseline.circuits import Circuit, all_nodes
    from clt_bench.baseline.faithfulness import patch_circuits
    from clt_bench.baseline.patching import PatchContext, Receiver, all_senders, path_patch
    from clt_bench.baseline.stage import run_baseline_stage
    from clt_bench.config import load_config
    from clt_bench.task.stage import load_task_batch

    loaded = _model(args.model)
    cfg = load_config("toy", [f"baseline.n_examples={args.n}"])
    batch = load_task_batch(cfg, loaded).subset(list(range(args.n)))
    results: dict[str, Any] = {
        "model": loaded.name,
        "n_examples": args.n,
        "threads": torch.get_num_threads(),
    }
    ctx_t = time.perf_counter()
    ctx = PatchContext.build(loaded.bridge, batch, "clean", cfg.baseline.batch_size)
    results["caches_s"] = time.perf_counter() - ctx_t
    n_layers, n_heads = loaded.n_layers, int(loaded.bridge.cfg.n_heads)
    senders = all_senders(n_layers, n_heads, [ctx.end_pos])
    rows = []
    for recv_name, recv in (
        ("logits", Receiver("logits", n_layers, ctx.end_pos)),
        ("mlp_last", Receiver("mlp", n_layers - 1, ctx.end_pos)),
    ):
        for s in sorted({1, 4, 16, len(senders)}):
            sec = _time(lambda s=s, recv=recv: path_patch(ctx, senders[:s], [recv]))
            rows.append({"receiver": recv_name, "senders": s, "seconds": sec})
            print(f"path_patch -> {recv_name:8s} senders={s:3d}  {sec:7.2f}s")
    results["path_patch"] = rows
    nodes = all_nodes(n_layers, n_heads)
    evals = []
    for k in sorted({1, 4, 16, len(nodes)}):
        c = Circuit(f"first{k}", tuple(nodes[:k]))
        sec = _time(lambda c=c: patch_circuits(ctx, [c], complement=True))
        evals.append({"nodes": k, "seconds": sec})
        print(f"circuit evaluation nodes={k:3d}  {sec:7.2f}s")
    sec = _time(lambda: patch_circuits(ctx, [Circuit("x", tuple(nodes[:8]))] * 10, True))
    evals.append({"nodes": 8, "circuits": 10, "seconds": sec})
    print(f"10 circuits of 8 nodes (one batch)  {sec:7.2f}s")
    results["circuit_evaluation"] = evals
    if not args.skip_stage:
        with tempfile.TemporaryDirectory() as tmp:
            full = load_config("toy")
            t0 = time.perf_counter()
            summary = run_baseline_stage(full, loaded, Path(tmp), resume=False)
            results["stage_s"] = time.perf_counter() - t0
            results["stage_phases_s"] = json.loads(
                (Path(tmp) / "baseline" / "faithfulness.json").read_text()
            )["phase_seconds"]
            results["stage_circuit_nodes"] = summary["circuit_size"]["nodes"]
        print(
            f"full baseline stage ({full.baseline.n_examples} examples)  "
            f"{results['stage_s']:7.1f}s  phases {results['stage_phases_s']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
