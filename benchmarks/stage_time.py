"""Run the toy pipeline stage by stage at 1 thread; print each stage's CPU and wall seconds.

    OMP_NUM_THREADS=1 python benchmarks/stage_time.py OUT_DIR [stage,stage,...]

``PROFILE=1``: each stage runs under cProfile with a CPU-time timer; the stats go to
``OUT_DIR/prof/<stage>.prof`` (``python -m pstats``). Stages already finished in ``OUT_DIR`` with
the same config and code are resumed (0 s), as ``clt-bench run`` does.
"""

from __future__ import annotations

import cProfile
import os
import sys
import time
from pathlib import Path

import torch

from clt_bench import load_config, run_pipeline
from clt_bench.stages import STAGE_NAMES as STAGES


def main(out: str, stages: list[str]) -> None:
    torch.set_num_threads(1)
    cfg = load_config("toy")
    profile = os.environ.get("PROFILE") == "1"
    (Path(out) / "prof").mkdir(parents=True, exist_ok=True)
    total = 0.0
    for stage in stages:
        prof = cProfile.Profile(time.process_time) if profile else None
        c0, w0 = time.process_time(), time.perf_counter()
        if prof is not None:
            prof.enable()
        run_pipeline(cfg, out, stages=[stage], progress=lambda s: None)
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(Path(out) / "prof" / f"{stage}.prof"))
        cpu = time.process_time() - c0
        total += cpu
        print(
            f"STAGE {stage} cpu={cpu:.1f} wall={time.perf_counter() - w0:.1f} "
            f"load1={os.getloadavg()[0]:.2f}",
            flush=True,
        )
    print(f"TOTAL cpu={total:.1f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else list(STAGES))
