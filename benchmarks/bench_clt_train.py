"""CLT training throughput and memory (a benchmark script, not a test).

1. tokens/s of a training step at the toy preset's CLT shape (4 layers, d_model 128, the preset's
   features and batch), on the activations of the real model when --model is given (else random);
2. achieved FLOP/s of that step (analytic matmul FLOPs / time) against the dense matmul FLOP/s
   torch reaches in this process on this machine;
3. peak memory of a training step for gpt2-random (12 x 768) with a small CLT against the analytic
   bound: parameters + gradients + AdamW state + the step's activations.

    python benchmarks/bench_clt_train.py [--threads N] [--steps 20] [--gpt2-shape] [--json out.json]

4. side by side with decode-clt 0.0.1 (the CLT trainer on PyPI) installed in its own venv:

    python -m venv /tmp/dclt && /tmp/dclt/bin/pip install decode-clt==0.0.1 torch==2.13.0
    python benchmarks/bench_clt_train.py --compare-decode-clt /tmp/dclt [--rounds 3]

   Each (shape, threads) cell alternates fresh processes of both trainers (same shape, JumpReLU
   config, bandwidth 1.0 as decode-clt hard-codes, AdamW, clipping) and reports median step times,
   plus clt-bench at its default bandwidth / auto decoder; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from clt_bench.clt.losses import TrainObjective
from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder
from clt_bench.config import load_config


def step_flops(spec: CLTSpec, n_tokens: int) -> float:
    """Matmul FLOPs of one training step: encoder forward + weight grad (x needs no grad),
    decoder forward + activation grad + weight grad."""
    L, F, d = spec.n_layers, spec.n_features, spec.d_model
    targets = sum(L - l if spec.cross_layer else 1 for l in range(L))
    enc = 2 * n_tokens * L * F * d
    dec = 2 * n_tokens * F * d * targets
    return 2 * enc + 3 * dec


def dense_flops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def make_clt(spec: CLTSpec, x: torch.Tensor) -> CrossLayerTranscoder:
    from clt_bench.clt.init import initialise

    clt = CrossLayerTranscoder(spec)
    initialise(clt, x, x, 0, 0.03, 0.05, 0.1)
    return clt


def time_steps(spec: CLTSpec, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Median seconds per training step (forward, backward, clip, AdamW)."""
    clt = make_clt(spec, x)
    obj = TrainObjective(clt, 3e-6, 4.0)
    return _median_step(obj, x, y, steps)


def _median_step(obj: TrainObjective, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)  # as clt_bench.clt.train uses it
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss, _, _ = obj(x, y, 1e-3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def memory_bench(n_features: int, n_tokens: int) -> dict[str, float]:
    """Peak RSS growth of the first training step (CUDA: max_memory_allocated) vs the bound."""
    from clt_bench.activations.extract import extract_activations
    from clt_bench.activations.tokens import TokenRows
    from clt_bench.models import load_model

    loaded = load_model("gpt2-random")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50257, (n_tokens // 128, 128), generator=g)
    x, y = extract_activations(loaded.bridge, TokenRows(tokens, torch.ones_like(tokens).bool()))
    del loaded
    spec = CLTSpec(12, 768, n_features, "jumprelu")
    clt = make_clt(spec, x)
    obj = TrainObjective(clt, 3e-6, 4.0)
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    n_params = sum(p.numel() for p in params)
    L, F = spec.n_layers, spec.n_features
    # saved for backward: pre-activations, activations, tanh terms, masks ~ 5 x [n, L, F] floats,
    # plus the decoder's per-layer outputs / errors ~ 4 x [n, L, d]
    act_bytes = 4 * (5 * n_tokens * L * F + 4 * n_tokens * L * 768)
    bound = 4 * n_params * 4 + act_bytes  # params + grads + 2 AdamW moments (fp32) + activations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = sum(p.numel() for p in clt.state_dict().values()) * 4 + x.numel() * 8
    loss, _, _ = obj(x, y, 1e-3)
    loss.backward()
    opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "n_features": n_features,
        "n_tokens": n_tokens,
        "n_params": n_params,
        "param_bytes": 4 * n_params,
        "analytic_bound_bytes": bound,
        "measured_step_peak_bytes": max(0, peak - before) + 4 * n_params,
        "rss_before_step_bytes": before,
        "inputs_and_weights_bytes": base,
    }


SHAPES = ((4, 128, 512, 4096), (12, 768, 1024, 512))  # (L, d, F, tokens) of the comparison


def worker(
    L: int, d: int, F: int, n: int, threads: int, steps: int, bandwidth: float, decoder: str
) -> dict[str, float]:
    """One clt-bench configuration in this process: decode-clt's inputs (randn x, y)."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, L, d, generator=g), torch.randn(n, L, d, generator=g)
    spec = CLTSpec(L, d, F, "jumprelu", bandwidth=bandwidth, decoder=decoder)
    obj = TrainObjective(make_clt(spec, x), 3e-6, 4.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    sec = _median_step(obj, x, y, steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (steps + 2)
    return {"step_seconds": sec, "minor_faults_per_step": faults}


def _run_json(cmd: list[str], threads: int) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare_decode_clt(
    venv: str, rounds: int, steps: int, bandwidth: float, thread_counts: tuple[int, ...] = (1, 2)
) -> list[dict]:
    """Median step seconds of decode-clt 0.0.1 and clt-bench, alternating fresh processes."""
    py = Path(venv) / "bin" / "python"
    if not py.is_file():
        print(
            f"skipped: no decode-clt venv at {venv} (create it with: python -m venv {venv} && "
            f"{venv}/bin/pip install decode-clt==0.0.1 torch==2.13.0)"
        )
        return []
    here = Path(__file__).resolve()
    rows = []
    for L, d, F, n in SHAPES:
        for threads in thread_counts:
            times: dict[str, list[float]] = {"decode-clt": [], "clt-bench": [], "sparse": []}
            for _ in range(rounds):
                shape = [str(v) for v in (L, d, F, n, threads, steps)]
                r = _run_json([str(py), str(here.parent / "_decode_clt_step.py"), *shape], threads)
                times["decode-clt"].append(r["step_seconds"])
                ours = [sys.executable, str(here), "--worker", *shape]
                r = _run_json([*ours, "1.0", "auto"], threads)
                times["clt-bench"].append(r["step_seconds"])
                r = _run_json([*ours, str(bandwidth), "auto"], threads)
                times["sparse"].append(r["step_seconds"])
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            rows.append(
                {
                    "shape": f"L{L} d{d} F{F}",
                    "tokens": n,
                    "threads": threads,
                    "decode_clt_tok_s": n / med["decode-clt"],
                    "clt_bench_tok_s": n / med["clt-bench"],
                    "speedup": med["decode-clt"] / med["clt-bench"],
                    f"clt_bench_bw{bandwidth:g}_tok_s": n / med["sparse"],
                    "speedup_bw": med["decode-clt"] / med["sparse"],
                    "load_avg_1min": os.getloadavg()[0],
                    "times": times,
                }
            )
            r = rows[-1]
            print(
                f"{r['shape']:>16} {n:>5} tok {threads} thr: decode-clt "
                f"{r['decode_clt_tok_s']:8.0f} tok/s | clt-bench (bw 1.0) "
                f"{r['clt_bench_tok_s']:8.0f} ({r['speedup']:.2f}x) | clt-bench (bw "
                f"{bandwidth:g}, auto) {n / med['sparse']:8.0f} ({r['speedup_bw']:.2f}x) | "
                f"load {r['load_avg_1min']:.1f}",
                flush=True,
            )
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        a = sys.argv[2:]
        res = worker(*(int(v) for v in a[:6]), float(a[6]), a[7])
        print(json.dumps(res))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: preset's value)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mem-features", type=int, default=1024)
    ap.add_argument("--mem-tokens", type=int, default=1024)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--gpt2-shape",
        action="store_true",
        help="also time a step of a 12 x 768 CLT with --mem-features features/layer",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--compare-decode-clt",
        metavar="VENV",
        default=None,
        help="venv with decode-clt 0.0.1: only run the side-by-side comparison",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--compare-threads", default="1,2", help="thread counts of the comparison (comma-separated)"
    )
    args = ap.parse_args()
    if args.compare_decode_clt:
        bw = load_config("toy").clt.bandwidth
        threads = tuple(int(t) for t in args.compare_threads.split(","))
        rows = compare_decode_clt(
            args.compare_decode_clt, args.rounds, min(args.steps, 5), bw, threads
        )
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return
    cfg = load_config("toy")
    c = cfg.clt
    threads = args.threads or c.threads
    if threads:
        torch.set_num_threads(threads)
    spec = CLTSpec(4, 128, c.n_features, c.activation, c.k, cross_layer=c.kind == "clt")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(c.batch_tokens, 4, 128, generator=g) * 3
    y = torch.randn(c.batch_tokens, 4, 128, generator=g)
    dense = dense_flops()
    sec = time_steps(spec, x, y, args.steps)
    flops = step_flops(spec, c.batch_tokens)
    out = {
        "threads": torch.get_num_threads(),
        "toy_step_seconds": sec,
        "toy_tokens_per_second": c.batch_tokens / sec,
        "step_matmul_flops": flops,
        "achieved_flops_per_second": flops / sec,
        "dense_matmul_flops_per_second": dense,
        "fraction_of_dense": flops / sec / dense,
    }
    if args.gpt2_shape:  # the same step at GPT-2 small's shape: more FLOPs per elementwise op
        g2 = CLTSpec(12, 768, args.mem_features, c.activation, c.k)
        x2 = torch.randn(args.mem_tokens, 12, 768, generator=g) * 3
        y2 = torch.randn(args.mem_tokens, 12, 768, generator=g)
        sec2 = time_steps(g2, x2, y2, 3)
        f2 = step_flops(g2, args.mem_tokens)
        out["gpt2_shape"] = {
            "n_features": args.mem_features,
            "n_tokens": args.mem_tokens,
            "step_seconds": sec2,
            "tokens_per_second": args.mem_tokens / sec2,
            "achieved_flops_per_second": f2 / sec2,
            "fraction_of_dense": f2 / sec2 / dense,
        }
    if not args.skip_memory:
        out["gpt2_random_memory"] = memory_bench(args.mem_features, args.mem_tokens)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
