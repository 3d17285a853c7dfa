"""What the conformance suite (``pytest --clt-bench-transcoder``) detects: the README's table.

Trains the plugin's small reference CLT (``clt_bench.testing.reference_run``) for CLT seeds 0 and 1
on the toy model, saves copies of seed 0 broken one way each, runs the suite on every copy in a
fresh pytest process and prints one markdown row per copy: the tests that fail and the first
failure's message. Also the per-layer reconstruction scalar of both seeds, which sets the lower
end of the suite's scale band (``clt_bench.testing.bars.SCALE_BAND``).

    python benchmarks/conformance_detection.py OUT_DIR [VARIANT,...]

About 4 minutes per seed to train and 2-4 minutes per variant on 2 busy CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from clt_bench.clt.circuit_tracer_io import load_clt, save_clt
from clt_bench.config import load_config
from clt_bench.pipeline import run_pipeline
from clt_bench.testing.reference_run import REFERENCE_OVERRIDES


def train(out: Path, seed: int) -> Path:
    cfg = load_config("toy", [*REFERENCE_OVERRIDES, f"clt.seed={seed}"])
    run_pipeline(cfg, out / f"reference-s{seed}", stages=["activations", "clt"], progress=print)
    return out / f"reference-s{seed}" / "clt"


def _scaled(factor: float):
    def edit(clt, other):
        for w in clt.W_dec:
            w.mul_(factor)

    return edit


def _shuffled(clt, other):
    gen = torch.Generator().manual_seed(0)
    for w in clt.W_dec:
        w.copy_(w[torch.randperm(w.shape[0], generator=gen)])


def _other_seed_decoder(clt, other):
    for w, wo in zip(clt.W_dec, other.W_dec, strict=True):
        w.copy_(wo)


def _nan(clt, other):
    clt.W_dec[1].view(-1)[3] = float("nan")


def _zero(clt, other):
    for w in clt.W_dec:
        w.zero_()


VARIANTS = {
    "good": None,
    "decoder x1.1": _scaled(1.1),
    "decoder x1.05": _scaled(1.05),
    "decoder x0.9": _scaled(0.9),
    "decoder x10": _scaled(10.0),
    "decoder rows shuffled": _shuffled,
    "decoder of CLT seed 1": _other_seed_decoder,
    "one NaN in W_dec_1": _nan,
    "decoder all zero": _zero,
}


def run_suite(path: Path, cwd: Path) -> dict[str, tuple[str, str]]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "clt_bench.pytest_plugin",
            "--clt-bench-transcoder",
            str(path),
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(cwd),
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "400"},  # whole failure messages in the summary
    )
    results = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"(PASSED|FAILED|ERROR|SKIPPED) \S*::(\w+)(?: - (.*))?", line)
        if m:
            results[m.group(2)] = (m.group(1), m.group(3) or "")
    return results


def main() -> None:
    from clt_bench.models import load_model
    from clt_bench.testing import measure_reconstruction_scale

    out = Path(sys.argv[1])
    only = sys.argv[2].split(",") if len(sys.argv) > 2 else list(VARIANTS)
    good, other = train(out, 0), train(out, 1)
    loaded = load_model("toy")
    for seed, path in ((0, good), (1, other)):
        scale = measure_reconstruction_scale(loaded, load_clt(path))["scale"]
        print(f"seed {seed}: reconstruction scalar per layer {[round(a, 4) for a in scale]}")
    rows = ["| transcoder | tests that fail | first message |", "|---|---|---|"]
    for name in only:
        edit = VARIANTS[name]
        path = good
        if edit is not None:
            clt = load_clt(good)
            with torch.no_grad():
                edit(clt, load_clt(other))
            path = save_clt(clt, out / re.sub(r"\W+", "_", name))
        results = run_suite(path, out)
        failed = [t for t, (status, _) in results.items() if status != "PASSED"]
        first = next((msg for status, msg in results.values() if status != "PASSED"), "")
        names = ", ".join(f"`{t.removeprefix('test_')}`" for t in failed) or "none"
        rows.append(f"| {name} | {names} | {first[:100]} |")
        print(json.dumps({"variant": name, "results": results}), flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
