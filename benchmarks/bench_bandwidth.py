"""JumpReLU bandwidth: training quality on the toy and the density the sparse decoder sees.

For each bandwidth eps, trains the toy preset's CLT (``clt-bench train-clt --preset toy``, same
seed and data) and prints NMSE, L0, dead fraction, replacement top-1 agreement, and per token and
layer: active features (h > theta) and entries the sparse decoder must gather (h > theta - eps/2:
active, or inside the threshold's straight-through window), measured on a training shard.

    python benchmarks/bench_bandwidth.py --out /tmp/bw [--bandwidths 1.0 0.01] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch


def kept_density(run: Path, eps: float, n: int = 8192) -> dict[str, float]:
    from clt_bench.clt.circuit_tracer_io import load_clt
    from clt_bench.io import load_tensors

    clt = load_clt(run / "clt")
    shard = sorted((run / "activations").glob("shard_*.safetensors"))[0]
    x = load_tensors(shard)["resid_mid"][:n].float()
    with torch.no_grad():
        pre = clt.pre_activations(x)  # [n, L, F]
        theta = clt.threshold
        active = (pre > theta).sum(-1).float().mean()
        kept = (pre > theta - eps / 2).sum(-1).float().mean()
    return {
        "active_per_layer": float(active),
        "gathered_per_layer": float(kept),
        "gathered_fraction": float(kept) / clt.spec.n_features,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--bandwidths", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    base = Path(args.out)
    rows = []
    for i, eps in enumerate(args.bandwidths):
        run = base / f"bw{eps:g}-seed{args.seed}"
        first = base / f"bw{args.bandwidths[0]:g}-seed{args.seed}"
        if i and not (run / "activations").exists() and (first / "activations").exists():
            shutil.copytree(first / "activations", run / "activations")  # same data, no recompute
        cmd = [
            sys.executable,
            "-m",
            "clt_bench",
            "train-clt",
            "--preset",
            "toy",
            "--out",
            str(run),
            "--device",
            args.device,
            "--set",
            f"clt.bandwidth={eps}",
            "--set",
            f"clt.seed={args.seed}",
            *sum((["--set", o] for o in args.overrides), []),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"bandwidth {eps:g}: failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        m = json.loads((run / "clt" / "metrics.json").read_text())
        row = {
            "bandwidth": eps,
            **{
                k: m.get(k)
                for k in (
                    "nmse",
                    "l0",
                    "dead_fraction",
                    "replacement_top1_agreement",
                    "train_seconds",
                )
            },
            **kept_density(run, eps),
        }
        rows.append(row)
        print(
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            ),
            flush=True,
        )
    (base / "bandwidth.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
