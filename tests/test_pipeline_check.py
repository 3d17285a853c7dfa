"""Pipeline resume logic and the ``clt-bench check`` regression gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A temporary copy of the installed package that ``code_identity`` hashes instead."""
    from clt_bench import paths

    copy = tmp_path / "pkg" / "clt_bench"
    shutil.copytree(paths.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(paths, "PACKAGE_DIR", copy)
    pipeline.code_identity.cache_clear()
    yield copy
    pipeline.code_identity.cache_clear()


def test_changed_code_recomputes_every_stage(fake_stages, package_copy, tmp_path):
    """One changed line in a stage's module of the (copied) package: no stage resumes."""
    cfg = load_config("toy")
    run = tmp_path / "run"
    pipeline.run_pipeline(cfg, run, progress=lambda s: None)
    before = pipeline.code_identity()
    CALLS.clear()
    pipeline.code_identity.cache_clear()
    pipeline.run_pipeline(cfg, run, progress=lambda s: None)
    assert CALLS == []  # same code, same config: everything resumes
    module = package_copy / "compare" / "stage.py"
    lines = module.read_text().splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if line.startswith("def "))
    lines[i] = lines[i].rstrip("\n") + "  # edited\n"
    module.write_text("".join(lines))
    pipeline.code_identity.cache_clear()
    assert pipeline.code_identity() != before
    pipeline.run_pipeline(cfg, run, progress=lambda s: None)
    assert CALLS == ["a", "b", "c"]
    marker = json.loads((run / "c" / "stage.json").read_text())
    assert marker["code"] == pipeline.code_identity()


def test_recompute_clears_stale_inner_caches(monkeypatch, package_copy, tmp_path):
    """A stage's own cache (here a file it reuses when present) cannot outlive a code change."""
    calls: list[str] = []

    def cached_stage(ctx):
        cache = ctx.stage_dir("a") / "cache.txt"
        if not cache.is_file():
            calls.append("computed")
            cache.write_text(str(len(calls)))
        return {"value": int(cache.read_text())}

    monkeypatch.setattr(pipeline, "STAGES", {"a": ("x:a", ("task",))})
    monkeypatch.setattr(pipeline, "_stage_fn", lambda s: cached_stage)
    cfg = load_config("toy")
    pipeline.run_pipeline(cfg, tmp_path, progress=lambda s: None)
    (package_copy / "errors.py").write_text((package_copy / "errors.py").read_text() + "\n# x\n")
    pipeline.code_identity.cache_clear()
    ctx = pipeline.run_pipeline(cfg, tmp_path, progress=lambda s: None)
    assert calls == ["computed", "computed"] and ctx.results["a"] == {"value": 2}
    pipeline.run_pipeline(cfg, tmp_path, resume=False, progress=lambda s: None)
    assert len(calls) == 3  # --no-resume clears it too


def test_interrupted_stage_keeps_its_checkpoints(monkeypatch, tmp_path):
    """A stage killed before it finished, rerun with the same hash, finds its partial outputs."""
    seen: list[bool] = []

    def flaky(ctx):
        ckpt = ctx.stage_dir("a") / "checkpoint"
        seen.append(ckpt.is_file())
        if not ckpt.is_file():
            ckpt.write_text("half")
            raise KeyboardInterrupt
        return {"value": 1}

    monkeypatch.setattr(pipeline, "STAGES", {"a": ("x:a", ("task",))})
    monkeypatch.setattr(pipeline, "_stage_fn", lambda s: flaky)
    cfg = load_config("toy")
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(cfg, tmp_path, progress=lambda s: None)
    pipeline.run_pipeline(cfg, tmp_path, progress=lambda s: None)
    assert seen == [False, True]
    # under another config the partial outputs are not reused
    seen.clear()
    (tmp_path / "a" / "stage.json").unlink()
    (tmp_path / "a" / "checkpoint").write_text("half")
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(load_config("toy", ["task.seed=7"]), tmp_path, progress=print)
    assert seen == [False]


def test_loaded_clt_is_hashed_by_content(fake_stages, tmp_path):
    """Overwriting a loaded CLT in place recomputes the stages that read it, not the others."""
    clt = tmp_path / "my-clt"
    clt.mkdir()
    (clt / "W_enc_0.safetensors").write_bytes(b"one")
    cfg = load_config("toy", [f"clt.load='{clt}'"])
    run = tmp_path / "run"
    pipeline.run_pipeline(cfg, run, progress=lambda s: None)
    CALLS.clear()
    pipeline.run_pipeline(cfg, run, progress=lambda s: None)
    assert CALLS == []
    (clt / "W_enc_0.safetensors").write_bytes(b"two")
    pipeline.run_pipeline(cfg, run, progress=lambda s: None)
    assert CALLS == ["b", "c"]  # "a" depends on the task only


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
