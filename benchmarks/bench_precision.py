"""Does bf16 autocast train as good a CLT as fp32? Seeds x precisions of ``clt-bench train-clt``.

Each run is a fresh process (``python -m clt_bench train-clt --no-resume``) of one preset, model
and device, differing only in ``clt.precision`` and ``clt.seed``. The table gives each run's NMSE,
L0, dead fraction, replacement top-1 and CE loss recovered, then per precision the mean and the
seed range, and per metric the verdict: a precision's mean lies within the reference precision's
seed spread when |mean - mean_ref| <= the reference's range over seeds (max - min). Where a seed
ran at both precisions, the paired verdict also compares the same seed's difference between the
precisions, mean |x_p(seed) - x_ref(seed)|, with that range: precision moves the metric less than
the seed does. With two or three seeds the paired form is the sharper test, since it takes the
seed's own effect out of the difference. precision.json is rewritten after every run, so a run
stopped by a time limit keeps the finished rows.

    python benchmarks/bench_precision.py --out /tmp/prec                      # toy, CPU
    python benchmarks/bench_precision.py --out $OUT/prec --preset gpt2 --model gpt2-random \\
        --device cuda --seeds 0 1 --set 'activations.corpus="toy"' --set clt.n_steps=200
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("nmse", "l0", "dead_fraction", "replacement_top1_agreement", "ce_loss_recovered")
SHORT = {
    "replacement_top1_agreement": "top1",
    "ce_loss_recovered": "ce_rec",
    "dead_fraction": "dead",
}
ROOT = Path(__file__).resolve().parents[1]


def run_dir(args: argparse.Namespace, prec: str, seed: int) -> Path:
    return Path(args.out) / f"{prec}-s{seed}"


def run_one(args: argparse.Namespace, prec: str, seed: int) -> dict:
    out = run_dir(args, prec, seed)
    cmd = [
        sys.executable, "-m", "clt_bench", "-v", "train-clt", "--preset", args.preset,
        "--out", str(out), "--no-resume",
        "--set", f'clt.precision="{prec}"', "--set", f"clt.seed={seed}",
    ]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model]
    if args.device:
        cmd += ["--device", args.device]
    for s in args.overrides:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    (Path(args.out) / f"{prec}-s{seed}.log").write_text(proc.stdout + proc.stderr)
    return read_row(args, prec, seed, wall, proc.returncode)


def read_row(args: argparse.Namespace, prec: str, seed: int, wall, rc: int) -> dict:
    """One table row from the run's metrics.json and log under --out."""
    out = run_dir(args, prec, seed)
    row: dict = {"precision": prec, "seed": seed, "wall_s": wall, "rc": rc}
    met = out / "clt" / "metrics.json"
    if rc == 0 and met.is_file():
        m = json.loads(met.read_text())
        row |= {k: m.get(k) for k in METRICS} | {"train_seconds": m.get("train_seconds")}
    log = Path(args.out) / f"{prec}-s{seed}.log"
    text = log.read_text() if log.is_file() else ""
    start = re.search(r"first training step begins ([0-9.]+) s", text)
    row["startup_s"] = float(start.group(1)) if start else None
    return row


def fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--reference", default="fp32", help="the precision whose spread is the bar")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--summarise",
        action="store_true",
        help="train nothing: tabulate the finished runs under --out (e.g. after a time limit)",
    )
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    head = f"{'precision':<10}{'seed':>5}" + "".join(f"{SHORT.get(k, k):>10}" for k in METRICS)
    head += f"{'train s':>9}{'start s':>9}"
    print(head, flush=True)
    # interleaved (seed-major), so a drift of the machine does not fall on one precision
    for seed in args.seeds:
        for prec in args.precisions:
            if args.summarise:
                if not (run_dir(args, prec, seed) / "clt" / "metrics.json").is_file():
                    continue
                r = read_row(args, prec, seed, None, 0)
            else:
                r = run_one(args, prec, seed)
            rows.append(r)
            if r["rc"] != 0 or "nmse" not in r:
                log = f"{args.out}/{prec}-s{seed}.log"
                print(f"{prec:<10}{seed:>5}  failed (rc {r['rc']}): see {log}")
            else:
                print(
                    f"{prec:<10}{seed:>5}"
                    + "".join(f"{fmt(r[k]):>10}" for k in METRICS)
                    + f"{fmt(r['train_seconds']):>9}{fmt(r['startup_s']):>9}",
                    flush=True,
                )
            write_summary(args, summarise(rows, args)[0], finished=False)
    summary, lines = summarise(rows, args)
    write_summary(args, summary, finished=True)
    print("\n" + "\n".join(lines))


def paired_diffs(rs: list[dict], ref: list[dict], key: str) -> list[float]:
    """|x(seed) - x_ref(seed)| for every seed that ran at both precisions."""
    at = {r["seed"]: r[key] for r in ref if r.get(key) is not None}
    return [abs(r[key] - at[r["seed"]]) for r in rs if r.get(key) is not None and r["seed"] in at]


def summarise(rows: list[dict], args: argparse.Namespace) -> tuple[dict, list[str]]:
    """The rows and per-metric verdicts (unpaired and paired), and the lines that report them."""
    ok = [r for r in rows if "nmse" in r]
    by = {p: [r for r in ok if r["precision"] == p] for p in args.precisions}
    ref = by.get(args.reference, [])
    lines = [f"per precision: mean [min, max] over seeds; verdict against {args.reference}"]
    verdicts, paired = {}, {}
    for p, rs in by.items():
        if not rs:
            continue
        parts = []
        for k in METRICS:
            vals = [r[k] for r in rs if r[k] is not None]
            rvals = [r[k] for r in ref if r[k] is not None]
            if not vals:
                continue
            mean = statistics.fmean(vals)
            text = f"{SHORT.get(k, k)} {mean:.4g} [{min(vals):.4g}, {max(vals):.4g}]"
            if p != args.reference and len(rvals) >= 2:
                spread = max(rvals) - min(rvals)
                within = abs(mean - statistics.fmean(rvals)) <= spread
                verdicts[(p, k)] = within
                text += " within" if within else " OUTSIDE"
                diffs = paired_diffs(rs, ref, k)
                if diffs:
                    d = statistics.fmean(diffs)
                    paired[(p, k)] = d <= spread
                    text += f" (paired |d| {d:.3g} vs range {spread:.3g}:"
                    text += " within)" if d <= spread else " OUTSIDE)"
            parts.append(text)
        lines.append(f"{p:<6} ({len(rs)} seeds): " + "; ".join(parts))
    for name, vs in (("verdict", verdicts), ("paired verdict", paired)):
        if vs:
            bad = [f"{p} {k}" for (p, k), v in vs.items() if not v]
            text = "all within the seed spread" if not bad else "outside: " + ", ".join(bad)
            lines.append(f"{name}: {text}")
    summary = {
        "rows": rows,
        "verdicts": {f"{p}:{k}": v for (p, k), v in verdicts.items()},
        "paired_verdicts": {f"{p}:{k}": v for (p, k), v in paired.items()},
    }
    return summary, lines


def write_summary(args: argparse.Namespace, summary: dict, finished: bool) -> None:
    """precision.json under --out: rewritten after every run, ``finished`` once all have run."""
    (Path(args.out) / "precision.json").write_text(
        json.dumps(summary | {"finished": finished}, indent=2)
    )


if __name__ == "__main__":
    main()
