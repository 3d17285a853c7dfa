"""benchmarks/bench_gpu.py runs end to end on CPU at toy sizes and prints its table."""

from __future__ import annotations

import json

import pytest
from helpers import run_benchmark


@pytest.mark.slow
def test_bench_gpu_tiny_on_cpu(tmp_path):
    gpu_json = str(tmp_path / "gpu.json")
    out = run_benchmark(
        "bench_gpu.py", "--device", "cpu", "--tiny", "--skip-graph", "--json", gpu_json, timeout=600
    )
    for needle in ("matmul peak", "fp32 dense", "bf16 sparse", "seed scale (sparse, fuse auto"):
        assert needle in out
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert not [r for r in rows if "error" in r]
    # the seed-scale step in one pass and in micro-batches (clt.micro_batch_tokens), both timed
    micro = {r["micro_batch_tokens"] for r in rows if r["shape"].startswith("seed")}
    assert micro == {0, 128}
    # the fused epilogue against the composed ops (clt.fuse), at the same shape
    assert {r["fuse"] for r in rows if r["shape"] == "gpt2-like" and r["precision"] == "bf16"} == {
        "auto",
        "off",
        "eager",
    }
    assert all(r["step_s"] > 0 for r in rows)
