"""Pipeline resume logic and the ``clt-bench check`` regression gate."""

from __future__ import annotations

import json

import pytest

from clt_bench import pipeline
from clt_bench.cli import main
from clt_bench.config import load_config
from clt_bench.errors import UserError
from clt_bench.report.check import check_metrics

CALLS: list[str] = []


def _stage(name):
    def fn(ctx):
        CALLS.append(name)
        return {"value": len(CALLS)}

    return fn


@pytest.fixture
def fake_stages(monkeypatch):
    CALLS.clear()
    stages = {"a": ("x:a", ("task",)), "b": ("x:b", ("clt",)), "c": ("x:c", ("report",))}
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr(pipeline, "_stage_fn", lambda s: _stage(s))


def test_resume_skips_finished_stages(fake_stages, tmp_path):
    cfg = load_config("toy")
    pipeline.run_pipeline(cfg, tmp_path, progress=lambda s: None)
    assert CALLS == ["a", "b", "c"]
    ctx = pipeline.run_pipeline(cfg, tmp_path, progress=lambda s: None)
    assert CALLS == ["a", "b", "c"]  # nothing recomputed
    assert ctx.results["b"] == {"value": 2}


def test_changed_config_recomputes_that_stage_and_later(fake_stages, tmp_path):
    pipeline.run_pipeline(load_config("toy"), tmp_path, progress=lambda s: None)
    CALLS.clear()
    cfg2 = load_config("toy", ["clt.n_features=64"])
    pipeline.run_pipeline(cfg2, tmp_path, progress=lambda s: None)
    assert CALLS == ["b", "c"]


def test_no_resume_and_unknown_stage(fake_stages, tmp_path):
    cfg = load_config("toy")
    pipeline.run_pipeline(cfg, tmp_path, progress=lambda s: None)
    CALLS.clear()
    pipeline.run_pipeline(cfg, tmp_path, resume=False, progress=lambda s: None)
    assert CALLS == ["a", "b", "c"]
    with pytest.raises(UserError, match="unknown stage"):
        pipeline.run_pipeline(cfg, tmp_path, stages=["zz"])


def test_check_tolerances():
    run = {"headline": {"task.prob_diff": 0.90, "clt.nmse": 0.2, "clt.l0": 12}}
    ref = {
        "metrics": {
            "task.prob_diff": {"value": 0.91, "abs_tol": 0.02},
            "clt.nmse": {"max": 0.15},
            "clt.l0": {"value": 10, "rel_tol": 0.1},
            "graphs.completeness_score": {"min": 0.5},
        }
    }
    rows = {r.metric: r for r in check_metrics(run, ref)}
    assert rows["task.prob_diff"].ok
    assert not rows["clt.nmse"].ok
    assert not rows["clt.l0"].ok  # |12 - 10| > 1
    assert (
        not rows["graphs.completeness_score"].ok
        and rows["graphs.completeness_score"].measured is None
    )


def test_check_cli_exit_codes(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text(json.dumps({"headline": {"task.prob_diff": 0.5}}))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"metrics": {"task.prob_diff": {"value": 0.5, "abs_tol": 0.01}}}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metrics": {"task.prob_diff": {"value": 0.9, "abs_tol": 0.01}}}))
    assert main(["check", str(tmp_path), "--reference", str(good)]) == 0
    assert main(["check", str(tmp_path), "--reference", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "task.prob_diff" in out and "outside tolerance" in out
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["check", str(tmp_path), "--reference", str(broken)]) == 2
    assert main(["check", str(tmp_path / "nope"), "--reference", str(good)]) == 2


def test_partial_run_still_sees_finished_stages(fake_stages, tmp_path):
    cfg = load_config("toy")
    pipeline.run_pipeline(cfg, tmp_path, progress=lambda s: None)
    CALLS.clear()
    ctx = pipeline.run_pipeline(cfg, tmp_path, stages=["c"], resume=False, progress=lambda s: None)
    assert CALLS == ["c"]
    assert set(ctx.results) == {"a", "b", "c"}
