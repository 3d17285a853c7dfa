"""Make a regression reference from runs that differ only in their seeds.

Each headline metric gets ``value`` = the mean over the runs and ``abs_tol`` = max(k * std,
``rel_floor`` * |mean|, ``abs_floor``): tolerances are measured from the seed spread, with a floor
so that a metric that happens not to move across a few seeds is not pinned to float noise.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from clt_bench.errors import UserError
from clt_bench.io import read_json, run_metadata, write_json

# headline keys that describe the run rather than measure it (not checked)
SKIP_SUFFIXES = ("seconds", "tokens_per_second", "wall_seconds", "train_tokens")


def make_reference(
    run_dirs: list[str | Path],
    out: str | Path,
    k: float = 3.0,
    rel_floor: float = 0.02,
    abs_floor: float = 1e-3,
) -> dict[str, Any]:
    if len(run_dirs) < 2:
        raise UserError("a reference needs at least two runs (different seeds) to measure spread.")
    heads = []
    for d in run_dirs:
        m = read_json(Path(d) / "metrics.json")
        if "headline" not in m:
            raise UserError(f"{d}/metrics.json has no headline; is the run finished?")
        heads.append(m["headline"])
    common = set(heads[0]).intersection(*heads[1:])
    metrics: dict[str, Any] = {}
    for name in sorted(common):
        if name.endswith(SKIP_SUFFIXES):
            continue
        vals = [float(h[name]) for h in heads]
        mean = statistics.fmean(vals)
        std = statistics.stdev(vals)
        tol = max(k * std, rel_floor * abs(mean), abs_floor)
        metrics[name] = {
            "value": round(mean, 6),
            "abs_tol": round(tol, 6),
            "seed_values": [round(v, 6) for v in vals],
        }
    ref = {
        **run_metadata(),
        "description": "clt-bench toy default: mean over seeds, tolerance = max(k*std, "
        f"rel_floor*|mean|, abs_floor) with k={k}, rel_floor={rel_floor}, abs_floor={abs_floor}",
        "runs": [str(d) for d in run_dirs],
        "metrics": metrics,
    }
    write_json(out, ref)
    return ref
