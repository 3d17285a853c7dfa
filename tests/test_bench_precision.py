"""benchmarks/bench_precision.py's verdicts, on finished runs written by hand (--summarise)."""

import json

from helpers import run_benchmark

BASE = {"l0": 50.0, "dead_fraction": 0.0, "replacement_top1_agreement": 0.9,
        "ce_loss_recovered": 0.95, "train_seconds": 1.0}  # fmt: skip


def _runs(tmp_path, nmse: dict[tuple[str, int], float]) -> None:
    for (prec, seed), v in nmse.items():
        d = tmp_path / f"{prec}-s{seed}" / "clt"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(BASE | {"nmse": v}))
        (tmp_path / f"{prec}-s{seed}.log").write_text(
            "first training step begins 3.5 s after the model was loaded\n"
        )


def _summarise(tmp_path) -> tuple[str, dict]:
    out = run_benchmark("bench_precision.py", "--summarise", "--out", str(tmp_path),
                        "--seeds", "0", "1", timeout=120)  # fmt: skip
    return out, json.loads((tmp_path / "precision.json").read_text())


def test_paired_verdict_takes_the_seed_out(tmp_path):
    # fp32 seeds differ by 0.010; bf16 at seed 1 is 0.006 from fp32's seed 1 (within) but 0.011
    # from fp32's mean (outside): the unpaired test confounds the seed with the precision
    _runs(tmp_path, {("fp32", 0): 0.100, ("fp32", 1): 0.110, ("bf16", 1): 0.116})
    out, js = _summarise(tmp_path)
    assert js["verdicts"]["bf16:nmse"] is False
    assert js["paired_verdicts"]["bf16:nmse"] is True
    assert js["paired_verdicts"]["bf16:l0"] is True and js["finished"] is True
    assert "verdict: outside: bf16 nmse" in out
    assert "paired verdict: all within the seed spread" in out
    assert [r["startup_s"] for r in js["rows"]] == [3.5, 3.5, 3.5]


def test_both_verdicts_fail_when_precision_moves_more_than_the_seed(tmp_path):
    _runs(tmp_path, {("fp32", 0): 0.100, ("fp32", 1): 0.110, ("bf16", 0): 0.1158,
                     ("bf16", 1): 0.1258})  # fmt: skip
    out, js = _summarise(tmp_path)
    assert js["verdicts"]["bf16:nmse"] is False
    assert js["paired_verdicts"]["bf16:nmse"] is False
    assert "paired verdict: outside: bf16 nmse" in out
