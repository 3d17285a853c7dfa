"""Benchmark: wall time, CPU time and peak memory of one attribution graph.

Cases (each in a fresh subprocess, so peak RSS is per case):
- toy: the 13-token task prompt on the toy model with its CLT (``--toy-clt DIR``; without one a
  seeded random CLT of the toy preset's size, calibrated on task prompts to ``--l0`` active
  features per token and layer). Without the toy's weights, its architecture with random weights.
- gpt2-random: the same prompt on gpt2-random with a random 12 x 4,096-feature CLT.
- scaling on the toy: prompt length (task prompt repeated / cut) and active features (L0 sweep).

    python benchmarks/bench_graphs.py [--threads 2] [--skip-gpt2] [--out bench.json]

Side by side with circuit-tracer 0.5.0 (its own venv: it pins transformers 4.x):

    python -m venv /tmp/ctvenv && /tmp/ctvenv/bin/pip install circuit-tracer==0.5.0 torch==2.13.0
    python benchmarks/bench_graphs.py --circuit-tracer-venv /tmp/ctvenv --toy-clt RUN/clt

builds the headline prompt's graph on the toy with the same tokens, the same CLT (the run's clt/
folder is already in circuit-tracer's layout), the greater-than target (given to circuit-tracer as
a custom target: its direction times the unembedding, read at the final LayerNorm's output), the
same batch size and max_feature_nodes, in fresh processes alternating (``--rounds``) at each of
``--thread-list``; each process makes ``--warmup`` untimed builds, then times ``--reps``
builds (median). Times are
circuit-tracer's ``attribute`` call and clt-bench's whole ``build_graph`` (which also prunes and
scores the graph). The edges must be identical: same feature nodes in the same order, and
|A_ours - A_ct| <= 1e-5 * max|A| + 1e-6 over the whole adjacency.
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
        from clt_bench.clt.circuit_tracer_io import load_clt

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


EDGE_RTOL, EDGE_ATOL = 1e-5, 1e-6


def _ct_spec(args: argparse.Namespace, work: Path) -> tuple[dict, list[int]]:
    """Inputs shared by both implementations: tokens, target vector, CLT, toy weights."""
    import torch

    from clt_bench.graphs.build import prompt_tokens
    from clt_bench.graphs.targets import make_targets
    from clt_bench.io import save_tensors
    from clt_bench.models.tokenizer import gpt2_tokenizer
    from clt_bench.models.toy import TOY_CONFIG, TOY_WEIGHTS, load_toy_module
    from clt_bench.paths import package_data

    tok = gpt2_tokenizer()
    tokens, _ = prompt_tokens(tok, PROMPT)
    module = load_toy_module()
    W_E = module.transformer.wte.weight.detach()  # [V, d], tied unembedding
    (target,) = make_targets("greater-than", tok, PROMPT, torch.zeros(W_E.shape[0]))
    # value = ln_final(x) @ W_U @ D (GPT-2 has no unembedding bias)
    vec = (target.direction.float() @ W_E).contiguous()
    save_tensors(work / "target.safetensors", {"vec": vec})
    spec = {
        "toy_weights": str(TOY_WEIGHTS),
        "arch": json.loads(TOY_CONFIG.read_text())["arch"],
        "tokenizer_dir": str(package_data("gpt2-tokenizer")),
        "clt_dir": str(Path(args.toy_clt).resolve()),
        "tokens": tokens.tolist(),
        "target_vec": str(work / "target.safetensors"),
        "target_weight": target.weight,
        "batch_size": args.batch_size,
        "max_feature_nodes": args.max_features,
        "reps": args.reps,
        "warmup": args.warmup,
    }
    return spec, tokens.tolist()


def ours_case(args: argparse.Namespace) -> dict:
    """clt-bench's side of the comparison (a fresh process): warm-up, then ``reps`` builds."""
    import statistics

    import torch

    torch.set_num_threads(args.threads)
    from clt_bench.clt.circuit_tracer_io import load_clt
    from clt_bench.config import GraphsConfig
    from clt_bench.graphs import build_graph
    from clt_bench.io import save_tensors
    from clt_bench.models import load_model

    loaded, clt = load_model("toy"), load_clt(args.toy_clt)
    cfg = GraphsConfig(batch_size=args.batch_size, max_feature_nodes=args.max_features)
    for _ in range(args.warmup):  # lazy imports, allocator, caches: as on circuit-tracer's side
        g = build_graph(loaded, clt, PROMPT, "greater-than", cfg)
    walls, cpus = [], []
    for _ in range(args.reps):
        t0, c0 = time.perf_counter(), time.process_time()
        g = build_graph(loaded, clt, PROMPT, "greater-than", cfg)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    save_tensors(
        Path(args.ct_out),
        {"adjacency": g.adjacency.contiguous(), "features": g.features.contiguous()},
    )
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def edge_difference(ours_path: Path, ct_path: Path) -> tuple[float, float]:
    """(max |A_ours - A_ct|, max |A|); raises if the node sets differ."""
    import torch

    from clt_bench.io import load_tensors

    a, b = load_tensors(ours_path), load_tensors(ct_path)
    feats_ct = b["active_features"][b["selected_features"]]  # (layer, pos, feature)
    if not torch.equal(a["features"].long(), feats_ct.long()):
        raise SystemExit("the two graphs have different feature nodes")
    A, B = a["adjacency"].double(), b["adjacency"].double()
    if A.shape != B.shape:
        raise SystemExit(f"adjacency shapes differ: {tuple(A.shape)} vs {tuple(B.shape)}")
    return float((A - B).abs().max()), float(A.abs().max())


def compare_circuit_tracer(args: argparse.Namespace) -> list[dict]:
    """Alternate fresh processes of both implementations; print and return the table."""
    import os
    import statistics
    import tempfile

    py = Path(args.circuit_tracer_venv) / "bin" / "python"
    if not py.is_file():
        raise SystemExit(
            f"no circuit-tracer venv at {args.circuit_tracer_venv}; create it with:\n"
            f"  python -m venv {args.circuit_tracer_venv} && {args.circuit_tracer_venv}/bin/pip "
            "install circuit-tracer==0.5.0 torch==2.13.0"
        )
    if not args.toy_clt:
        raise SystemExit("--toy-clt RUN/clt is needed (a toy run's CLT in circuit-tracer layout)")
    work = Path(tempfile.mkdtemp(prefix="bench-ct-"))
    spec, _ = _ct_spec(args, work)
    here = Path(__file__).resolve().parent
    rows = []
    for threads in (int(t) for t in args.thread_list.split(",")):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        spec_path = work / f"spec{threads}.json"
        spec_path.write_text(json.dumps({**spec, "threads": threads, "out": str(work / "ct.st")}))
        ct_cmd = [str(py), str(here / "_circuit_tracer_graph.py"), str(spec_path)]
        ours_cmd = [sys.executable, __file__, "--ct-case", "--threads", str(threads)]
        ours_cmd += ["--toy-clt", args.toy_clt, "--ct-out", str(work / "ours.st")]
        ours_cmd += ["--batch-size", str(args.batch_size), "--max-features", str(args.max_features)]
        ours_cmd += ["--reps", str(args.reps), "--warmup", str(args.warmup)]
        t: dict[str, list[dict]] = {"ct": [], "ours": []}
        for r in range(args.rounds):
            order = (("ct", ct_cmd), ("ours", ours_cmd))
            for name, cmd in order if r % 2 == 0 else order[::-1]:
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
                t[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        diff, scale = edge_difference(work / "ours.st", work / "ct.st")
        med = {
            k: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "cpu_s")}
            for k, v in t.items()
        }
        rows.append(
            {
                "threads": threads,
                "circuit_tracer_s": round(med["ct"]["wall_s"], 4),
                "clt_bench_s": round(med["ours"]["wall_s"], 4),
                "speedup": round(med["ct"]["wall_s"] / med["ours"]["wall_s"], 2),
                "circuit_tracer_cpu_s": round(med["ct"]["cpu_s"], 4),
                "clt_bench_cpu_s": round(med["ours"]["cpu_s"], 4),
                "cpu_speedup": round(med["ct"]["cpu_s"] / med["ours"]["cpu_s"], 2),
                "max_edge_diff": diff,
                "max_abs_edge": scale,
                "edges_identical": diff <= EDGE_RTOL * scale + EDGE_ATOL,
                "load1": round(os.getloadavg()[0], 2),
            }
        )
    print(
        f"headline prompt {PROMPT!r}, toy + {args.toy_clt}, batch {args.batch_size}, "
        f"max_feature_nodes {args.max_features}, {args.rounds} rounds x {args.reps} reps "
        "(medians; wall s / CPU s)"
    )
    print(
        "threads | circuit-tracer s | clt-bench s | speed-up | CPU s ct / ours (x) | "
        "max edge diff (max |A|) | identical | load1"
    )
    for r in rows:
        print(
            f"{r['threads']:>7} | {r['circuit_tracer_s']:>16.4f} | {r['clt_bench_s']:>11.4f} | "
            f"{r['speedup']:>7.2f}x | {r['circuit_tracer_cpu_s']:.4f} / "
            f"{r['clt_bench_cpu_s']:.4f} ({r['cpu_speedup']:.2f}x) | "
            f"{r['max_edge_diff']:.2e} ({r['max_abs_edge']:.2f}) | "
            f"{r['edges_identical']} | {r['load1']}"
        )
    return rows


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
    p.add_argument("--circuit-tracer-venv", default="", help="compare with circuit-tracer 0.5.0")
    p.add_argument("--thread-list", default="1,2", help="comparison: thread counts")
    p.add_argument("--rounds", type=int, default=3, help="comparison: alternating rounds")
    p.add_argument("--reps", type=int, default=5, help="comparison: timed builds per process")
    p.add_argument(
        "--warmup", type=int, default=3, help="comparison: untimed builds per process first"
    )
    p.add_argument("--ct-case", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ct-out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ct_case:
        print(json.dumps(ours_case(args)))
        return
    if args.circuit_tracer_venv:
        rows = compare_circuit_tracer(args)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
        return
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
