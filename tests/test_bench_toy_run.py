"""benchmarks/bench_toy_run.py times fresh `clt-bench run`s per mode and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clt_bench.threads import available_cores

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_toy_run_on_the_quick_preset(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_toy_run.py"),
            "--out",
            str(tmp_path),
            "--preset",
            "quick",
            "--modes",
            "overlap,no-plt",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    assert "round 0   this  overlap: wall" in out and "round 0   this   no-plt: wall" in out
    rows = {line.split(" | ")[1]: line for line in out.splitlines() if line.startswith("| this")}
    assert set(rows) == {"overlap", "no-plt"}
    cells = [c.strip() for c in rows["no-plt"].strip("|").split("|")]
    assert float(cells[3]) > 0 and cells[-3] == "0.0"  # wall; no plt stage time
    # the plt stage ran in the second process where the machine has the cores for it
    assert ("*" in rows["overlap"]) == (available_cores() >= 2)
    assert (tmp_path / "this-overlap-0" / "report.html").is_file()
