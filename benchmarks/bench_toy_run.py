"""Wall-clock time of the whole toy pipeline (`clt-bench run`), per mode, repeated and interleaved.

    python benchmarks/bench_toy_run.py --out /tmp/toyrun [--modes overlap,serial,no-plt]
        [--repeats 2] [--code OTHER_CHECKOUT ...] [--preset toy]

Each run is a fresh ``clt-bench run`` in its own folder (nothing resumed), as a user would start
it. Modes: ``overlap`` (the default command: the plt stage in a second process beside the
CLT), ``serial`` (``--serial``: one process, every stage on all cores), ``no-plt``
(``--set plt.enabled=false``: the pipeline without the per-layer transcoders). ``--code DIR``
(repeatable) runs the same modes on another checkout of clt-bench (its package directory goes
first on PYTHONPATH), so a before/after comparison shares the machine's state: the runs are
interleaved, one of each (code, mode) per round. Prints one line per run and a table of medians:
wall seconds, CPU seconds of the run (user + system of its processes), the sum of its stage
times, and each stage's seconds (a stage in the second process is marked ``*``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from clt_bench.stages import STAGE_NAMES as PIPELINE_STAGES

ROOT = Path(__file__).resolve().parents[1]
MODES = {"overlap": [], "serial": ["--serial"], "no-plt": ["--set", "plt.enabled=false"]}
STAGES = tuple(PIPELINE_STAGES)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_run(
    code: str | None, mode: str, out: Path, extra: list[str]
) -> tuple[dict[str, float], list[str]]:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # this checkout's package unless another is named (not whatever clt_bench is installed)
    code = code or str(ROOT)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "clt_bench", "run", "--out", str(out), *MODES[mode], *extra]
    load = os.getloadavg()[0]
    c0, t0 = children_cpu(), time.perf_counter()
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        # run outside any checkout: ``python -m`` puts the working directory first on sys.path,
        # ahead of PYTHONPATH, so from a checkout's root every run would use that checkout's code
        subprocess.run(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True, cwd=out.parent
        )
    row = {"wall": time.perf_counter() - t0, "cpu": children_cpu() - c0, "load1": load}
    wlog = out / "plt-worker.log"
    text = wlog.read_text(errors="replace") if wlog.is_file() else ""
    side = [s for s in STAGES if f"] {s}: " in text]  # the stages the second process ran
    for s in STAGES:
        marker = out / s / "stage.json"
        if marker.is_file():
            row[s] = float(json.loads(marker.read_text()).get("seconds", float("nan")))
    row["stage_sum"] = sum(row.get(s, 0.0) for s in STAGES)
    return row, side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="a scratch folder for the runs")
    ap.add_argument("--modes", default="overlap,serial,no-plt")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--code", action="append", default=[], help="another checkout to compare")
    ap.add_argument("--preset", default="toy", help="the preset every run uses")
    args = ap.parse_args()
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"unknown mode {unknown[0]} (modes: {', '.join(MODES)})")
    codes: list[str | None] = [None, *[str(Path(c).resolve()) for c in args.code]]
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    sides: dict[tuple[str, str], set[str]] = {}
    for r in range(args.repeats):
        for ci, code in enumerate(codes):
            for mode in modes:
                tag = "this" if code is None else f"code{ci}"
                out = Path(args.out).resolve() / f"{tag}-{mode}-{r}"
                row, side = one_run(code, mode, out, ["--preset", args.preset])
                rows.setdefault((tag, mode), []).append(row)
                sides.setdefault((tag, mode), set()).update(side)
                print(
                    f"round {r} {tag:>6} {mode:>8}: wall {row['wall']:.1f} s, cpu "
                    f"{row['cpu']:.1f} s, stages {row['stage_sum']:.1f} s "
                    f"(load {row['load1']:.2f})",
                    flush=True,
                )
    head = ["code", "mode", "runs", "wall", "cpu", "stage sum", *STAGES]
    print("\nmedians (seconds; * = in the second process)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (tag, mode), rs in rows.items():

        def med(k: str, rs=rs) -> float:
            return statistics.median(x.get(k, float("nan")) for x in rs)

        cells = [f"{med(s):.1f}{'*' if s in sides[(tag, mode)] else ''}" for s in STAGES]
        line = [tag, mode, str(len(rs)), f"{med('wall'):.1f}", f"{med('cpu'):.1f}"]
        print("| " + " | ".join([*line, f"{med('stage_sum'):.1f}", *cells]) + " |")
    if codes[1:]:
        print(f"\ncodes: this = {ROOT}")
        for ci, code in enumerate(codes[1:], 1):
            print(f"code{ci} = {code}")


if __name__ == "__main__":
    main()
