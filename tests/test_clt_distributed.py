"""torchrun with gloo, 2 CPU processes: DDP and FSDP2 training equal one process on the same
global batch (within float tolerance)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from clt_bench.activations.store import CachedBlocks
from clt_bench.clt.train import train_clt
from clt_bench.io import load_tensors

sys.path.insert(0, str(Path(__file__).parent))
from test_clt_train import D, L, make_shards, small_cfg  # noqa: E402

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {tests!r})
    from test_clt_train import D, L, small_cfg
    from clt_bench.activations.store import CachedBlocks
    from clt_bench.clt import distributed as dist_mod
    from clt_bench.clt.train import train_clt
    from clt_bench.io import save_tensors

    parallel, out = sys.argv[1], Path(sys.argv[2])
    info = dist_mod.setup("cpu")
    src = CachedBlocks(sorted((out / "acts").glob("shard_*.safetensors")), 2, 3)
    cfg = small_cfg(f'clt.parallel="{{parallel}}"')
    res = train_clt(cfg, src, L, D, out / parallel, "cpu", info)
    if info.is_main:
        save_tensors(out / f"{{parallel}}.safetensors", res.clt.state_dict())
    dist_mod.teardown(info)
""")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one(tmp_path, parallel):
    make_shards(tmp_path / "acts")
    src = CachedBlocks(sorted((tmp_path / "acts").glob("shard_*.safetensors")), 2, 3)
    single = train_clt(small_cfg(), src, L, D, tmp_path / "single")
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(29500 + os.getpid() % 1000 + (parallel == "fsdp")),
            str(script),
            parallel,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    multi = load_tensors(tmp_path / f"{parallel}.safetensors")
    ref = single.clt.state_dict()
    assert multi.keys() == ref.keys()
    for k, v in ref.items():
        assert torch.allclose(multi[k], v, atol=2e-5, rtol=1e-4), (k, (multi[k] - v).abs().max())
