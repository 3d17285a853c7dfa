"""Pre-flight: the memory estimate against measured peaks, and the refusal of a run too large."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from clt_bench.cli import main
from clt_bench.config import load_config
from clt_bench.errors import UserError
from clt_bench.preflight import (
    GB,
    Calibration,
    check_fits,
    estimate,
    host_memory,
    transcoder_parameters,
)

STAGES = "task,activations,clt"
GPT2_TINY = [
    'model.name="gpt2-random"',
    "task.n=32",
    "task.family_n=0",
    "activations.n_tokens=4096",
    "activations.eval_tokens=1024",
    "activations.batch_size=8",
    "activations.shard_tokens=4096",
    "activations.shuffle_buffer=4096",
    "clt.n_features=256",
    "clt.n_steps=10",
    "clt.batch_tokens=256",
    "clt.eval_tokens=256",
    "clt.checkpoint_every=10",
    "clt.log_every=5",
    "clt.warmup_steps=2",
    "plt.enabled=false",
]

# both in a fresh interpreter, so the estimate's measured base is that of a real run's process.
# The peak is the process's own VmHWM: Linux's ru_maxrss carries over the RSS the forking parent
# had at exec (the whole pytest process, GBs after the slow tests), so it measured the test run.
MEASURE = """
import json, sys
from clt_bench.config import load_config
from clt_bench.pipeline import run_pipeline
from clt_bench.preflight import _status_kb
preset, stages, out, *ov = sys.argv[1:]
run_pipeline(load_config(preset, ov), out, stages=stages.split(","), progress=lambda l: None)
print(json.dumps(_status_kb("VmHWM") * 1024))
"""
ESTIMATE = """
import json, sys
from clt_bench.config import load_config
from clt_bench.preflight import run_preflight
preset, stages, out, *ov = sys.argv[1:]
run_preflight(load_config(preset, ov), out, stages.split(","), mode="measure", progress=print)
"""


def _python(code: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=True,
    )
    return out.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "overrides"), [("quick", []), ("toy", GPT2_TINY)], ids=["toy", "gpt2-random"]
)
def test_memory_estimate_within_30_percent(tmp_path, preset, overrides):
    """The pre-flight's peak host memory is within 30 % of the peak RSS of the same stages."""
    text = _python(ESTIMATE, preset, STAGES, str(tmp_path / "est"), *overrides)
    line = next(x for x in text.splitlines() if x.startswith("pre-flight estimate"))
    estimated = float(line.split("peak host memory ")[1].split(" GB")[0]) * GB
    measured = json.loads(_python(MEASURE, preset, STAGES, str(tmp_path / "run"), *overrides))
    assert abs(estimated - measured) <= 0.3 * measured, (estimated / GB, measured / GB)


def _cal(base: float = 1e9) -> Calibration:
    return Calibration(
        base_bytes=base,
        fwd_bytes_per_row=1e6,
        fwd_seconds_per_row=1e-2,
        task_bytes_per_row=1e6,
        task_seconds_per_row=1e-3,
        step_bytes_per_tfl=10.0,
        step_bytes_per_token=1e5,
        step_seconds_per_tfl=1e-10,
    )


def test_estimate_scales_with_the_transcoder():
    small = load_config("toy")
    big = load_config("toy", ["clt.n_features=16384"])
    stages = ["activations", "clt"]
    e_small, e_big = (estimate(c, stages, _cal(), 4, 128) for c in (small, big))
    assert e_big.host_bytes > e_small.host_bytes
    # 16 bytes a parameter (weight, gradient, two AdamW moments) at least
    state = 16 * transcoder_parameters(big.clt, 4, 128)
    assert e_big.stage_host_bytes["clt"] >= state
    assert e_big.stage_seconds["clt"] > e_small.stage_seconds["clt"]
    # the PLT in a second process adds that process's model and PLT
    both = ["activations", "clt", "plt"]
    serial = estimate(small, both, _cal(), 4, 128)
    parallel = estimate(small, both, _cal(), 4, 128, parallel_plt=True)
    assert parallel.host_bytes > serial.host_bytes + 0.9e9


def test_gpt2_preset_needs_tens_of_gb():
    """The issue's arithmetic: 12 x 16,384 features (~1.13B parameters, ~18 GB with AdamW) and a
    stream buffer of 262,144 tokens x 12 layers x 2 hooks x 768 x 2 bytes (~9.7 GB) + a copy."""
    cfg = load_config("gpt2")
    assert 1.1e9 < transcoder_parameters(cfg.clt, 12, 768) < 1.2e9
    est = estimate(cfg, ["activations", "clt"], _cal(), 12, 768)
    assert est.gpu_bytes is not None and 35 * GB < est.gpu_bytes < 70 * GB


def test_refuses_a_run_that_does_not_fit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLT_BENCH_PREFLIGHT", "estimate")
    out = tmp_path / "run"
    rc = main(["run", "--out", str(out), "--stages", STAGES, "--set", "clt.n_features=100000000"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "needs an estimated" in err and "--yes" in err
    assert not (out / "task" / "stage.json").exists()  # refused before any stage
    est = estimate(load_config("toy", ["clt.n_features=100000000"]), ["clt"], _cal(), 4, 128)
    with pytest.raises(UserError, match="needs an estimated"):
        check_fits(est, "cpu")
    check_fits(est, "cpu", force=True)  # --yes
    assert est.host_bytes > host_memory()
