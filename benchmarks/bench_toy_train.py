"""Time the toy preset's whole CLT training (``train_clt``: init, 1,000 steps, logging,
checkpoints, data loading) on an existing run's activation cache; wall and CPU seconds.

    python benchmarks/bench_toy_train.py results/<run>/activations [--set clt.decoder=dense ...]

Prints one JSON line: steps, wall and CPU seconds, seconds per step, the load average. CPU
seconds are the fairer number on a shared machine (wall time includes waiting for a core).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from clt_bench.activations.store import CachedBlocks
from clt_bench.clt.train import train_clt
from clt_bench.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("activations", help="a toy run's activations/ folder (the cache mode)")
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--set", action="append", default=[], help="SECTION.KEY=VALUE overrides")
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    args = ap.parse_args()
    cfg = load_config(args.preset, args.set)
    a = cfg.activations
    paths = sorted(Path(args.activations).glob("shard_*.safetensors"))
    source = CachedBlocks(paths, max(1, -(-a.shuffle_buffer // a.shard_tokens)), a.seed)
    x = next(source.blocks(0))[1][0]
    n_layers, d_model = x.shape[1], x.shape[2]
    del x
    with tempfile.TemporaryDirectory() as stage:
        t0, c0 = time.perf_counter(), time.process_time()
        r = train_clt(cfg, source, n_layers, d_model, Path(stage), "cpu", stop_after=args.steps)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {
        "steps": r.steps,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "train_seconds": round(r.seconds, 2),
        "seconds_per_step": round(r.seconds / max(r.steps, 1), 4),
        "cpu_seconds_per_step": round(cpu / max(r.steps, 1), 4),
        "threads": torch.get_num_threads(),
        "decoder": cfg.clt.decoder,
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
