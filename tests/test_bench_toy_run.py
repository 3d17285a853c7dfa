"""benchmarks/bench_toy_run.py times fresh `clt-bench run`s per mode and prints its table."""

from __future__ import annotations

import pytest
from helpers import run_benchmark

from clt_bench.threads import available_cores


@pytest.mark.slow
def test_bench_toy_run_on_the_quick_preset(tmp_path):
    out = run_benchmark(
        "bench_toy_run.py",
        *("--out", str(tmp_path), "--preset", "quick", "--modes", "overlap,no-plt"),
        *("--repeats", "1"),
    )
    assert "round 0   this  overlap: wall" in out and "round 0   this   no-plt: wall" in out
    rows = {line.split(" | ")[1]: line for line in out.splitlines() if line.startswith("| this")}
    assert set(rows) == {"overlap", "no-plt"}
    header = next(line for line in out.splitlines() if line.startswith("| code"))
    names = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(names, (c.strip() for c in rows["no-plt"].strip("|").split("|")), strict=True))
    assert float(cells["wall"]) > 0 and cells["plt"] == "0.0"  # no plt stage time
    # the plt stage ran in the second process where the machine has the cores for it
    assert ("*" in rows["overlap"]) == (available_cores() >= 2)
    assert (tmp_path / "this-overlap-0" / "report.html").is_file()
