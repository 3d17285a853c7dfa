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
from clt_bench.stages import Stage

CALLS: list[str] = []


def _stage(name):
    def fn(ctx):
        CALLS.append(name)
        return {"value": len(CALLS)}

    return fn


@pytest.fixture
def fake_stages(monkeypatch):
    CALLS.clear()
    stages = (
        Stage("a", ("task",), (), (), _stage("a")),
        Stage("b", ("clt",), (), (), _stage("b")),
        Stage("c", ("report",), (), (), _stage("c")),
    )
    monkeypatch.setattr(pipeline, "STAGES", stages)


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

    monkeypatch.setattr(pipeline, "STAGES", (Stage("a", ("task",), (), (), cached_stage),))
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

    monkeypatch.setattr(pipeline, "STAGES", (Stage("a", ("task",), (), (), flaky),))
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
    numbers = ["--numbers-only"]  # a bare metrics.json: no stages to verify (test_reliability)
    assert main(["check", str(tmp_path), "--reference", str(good), *numbers]) == 0
    assert main(["check", str(tmp_path), "--reference", str(bad), *numbers]) == 1
    out = capsys.readouterr().out
    assert "task.prob_diff" in out and "1 of 1 metrics outside their band" in out
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["check", str(tmp_path), "--reference", str(broken), *numbers]) == 2
    assert main(["check", str(tmp_path / "nope"), "--reference", str(good)]) == 2


def test_check_defaults_to_the_runs_models_reference(tmp_path, monkeypatch, capsys):
    """Without --reference: results/reference/<model>.json of the run's config (planted, the
    default model, and toy each have one); one sentence when the run has no config to tell."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"headline": {"t.x": 0.5}}))
    assert main(["check", "run", "--numbers-only"]) == 2
    assert "no config.json beside run" in capsys.readouterr().err
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {"name": "planted"}}))
    ref = tmp_path / "results" / "reference" / "planted.json"
    ref.parent.mkdir(parents=True)
    ref.write_text(json.dumps({"metrics": {"t.x": {"value": 0.5, "abs_tol": 0.01}}}))
    assert main(["check", "run", "--numbers-only"]) == 0
    assert "results/reference/planted.json" in capsys.readouterr().out


def test_partial_run_still_sees_finished_stages(fake_stages, tmp_path):
    cfg = load_config("toy")
    pipeline.run_pipeline(cfg, tmp_path, progress=lambda s: None)
    CALLS.clear()
    ctx = pipeline.run_pipeline(cfg, tmp_path, stages=["c"], resume=False, progress=lambda s: None)
    assert CALLS == ["c"]
    assert set(ctx.results) == {"a", "b", "c"}


# --- the tolerance policy of make-reference / check -------------------------------------------

# (metric, mean, seed std) shaped like the toy default; std 0 = does not depend on the CLT seed
TOY_LIKE = (
    ("task.prob_diff", 0.81003, 0.0),
    ("task.logit_diff", 188.43, 0.0),
    ("task.n_examples", 490.0, 0.0),
    ("baseline.faithfulness_ratio", 0.963586, 0.0),
    ("activations.heldout_tokens", 17255.0, 0.0),
    ("clt.nmse", 0.014946, 0.000143),
    ("clt.replacement_prob_diff", 0.793504, 0.00195),
    ("clt.l0", 49.55, 1.27),
    ("compare.replacement_prob_diff", 0.783529, 0.002),
    ("compare.node_precision_all", 0.6, 0.0),
    ("compare.model_prob_diff", 0.803941, 0.0),
    ("graphs.completeness_score", 0.960164, 0.0052),
    ("features.n_comparator", 8.67, 1.53),
    ("features.n_parity", 0.0, 0.0),
)
Z = (-1.3, -0.4, 0.1, 0.5, 1.1)  # five seeds' standardised draws (mean 0, sd ~0.9)


def _seed_heads() -> list[dict[str, float]]:
    heads = []
    for z in Z:
        h = {}
        for name, mean, std in TOY_LIKE:
            v = mean + z * std
            h[name] = round(v) if name.split(".")[1].startswith("n_") else v
        heads.append(h)
    return heads


def _write_run(path, headline) -> str:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"headline": headline, "config": {"seed": 0}}))
    return str(path)


@pytest.fixture
def toy_like_reference(tmp_path):
    from clt_bench.report.reference_bands import make_reference

    seeds = [_write_run(tmp_path / f"seed{i}", h) for i, h in enumerate(_seed_heads())]
    threads = dict(_seed_heads()[0])  # seed 0 under another thread count: float noise only
    threads = {k: v + 3e-8 if not float(v).is_integer() else v for k, v in threads.items()}
    var = _write_run(tmp_path / "threads", threads)
    return make_reference(seeds, tmp_path / "ref.json", variation_dirs=[var])


def _fresh_draw(k_sigma: float) -> dict[str, float]:
    """A run with a new seed, ``k_sigma`` standard deviations off on every seed metric."""
    return {name: mean + k_sigma * std for name, mean, std in TOY_LIKE}


def test_reference_policy_per_metric_kind(toy_like_reference):
    bands = toy_like_reference["metrics"]
    assert bands["task.n_examples"]["policy"] == "exact"
    assert bands["task.n_examples"]["lo"] == bands["task.n_examples"]["hi"] == 490
    assert bands["task.prob_diff"]["policy"] == "deterministic"
    assert bands["task.prob_diff"]["tol"] == pytest.approx(1e-6)  # floor > 3 x 3e-8 measured
    assert bands["compare.model_prob_diff"]["policy"] == "deterministic"
    assert bands["clt.nmse"]["policy"] == "seed t-interval"
    assert bands["features.n_parity"]["policy"] == "seed floor"
    assert (bands["features.n_parity"]["lo"], bands["features.n_parity"]["hi"]) == (-2, 2)
    assert bands["compare.node_precision_all"]["policy"] == "seed floor"
    # prediction interval with Bonferroni over the 8 seed-dependent metrics, t with n - 1 dof
    from scipy import stats

    b = bands["clt.nmse"]
    m = toy_like_reference["policy"]["n_seed_metrics"]
    assert m == 8  # every metric outside task, baseline, activations and the model-only ones
    t = stats.t.ppf(1 - 0.01 / (2 * m), 4)
    assert b["tol"] == pytest.approx(t * b["std"] * (1 + 1 / 5) ** 0.5)
    assert b["lo"] < 0.014946 < b["hi"]
    # seed-dependent counts are widened outward to whole numbers
    assert float(bands["features.n_comparator"]["lo"]).is_integer()


@pytest.mark.parametrize(
    "perturb, failing",
    [
        (lambda h: h.update({"clt.nmse": h["clt.nmse"] * 1.5}), {"clt.nmse"}),
        (
            lambda h: h.update(
                {
                    "clt.replacement_prob_diff": h["clt.replacement_prob_diff"] - 0.05,
                    "compare.replacement_prob_diff": h["compare.replacement_prob_diff"] - 0.05,
                }
            ),
            {"clt.replacement_prob_diff", "compare.replacement_prob_diff"},
        ),
        (lambda h: h.update({"task.n_examples": 489.0}), {"task.n_examples"}),
        (  # the target's sign flipped: every probability / logit difference changes sign
            lambda h: h.update(
                {k: -v for k, v in h.items() if k.endswith(("prob_diff", "logit_diff"))}
            ),
            {
                "task.prob_diff",
                "task.logit_diff",
                "clt.replacement_prob_diff",
                "compare.replacement_prob_diff",
                "compare.model_prob_diff",
            },
        ),
    ],
    ids=["nmse_x1.5", "replacement_pd_minus_0.05", "prompt_dropped", "target_sign_flipped"],
)
def test_gate_fails_on_each_regression(toy_like_reference, perturb, failing):
    run = _fresh_draw(0.5)
    assert all(r.ok for r in check_metrics({"headline": run}, toy_like_reference))
    perturb(run)
    failed = {r.metric for r in check_metrics({"headline": run}, toy_like_reference) if not r.ok}
    assert failed == failing


def test_gate_passes_new_seed_draws_and_its_own_runs(toy_like_reference, tmp_path):
    for k_sigma in (-3.0, 3.0):  # a fresh seed three standard deviations off on every metric
        rows = check_metrics({"headline": _fresh_draw(k_sigma)}, toy_like_reference)
        assert all(r.ok for r in rows), [r for r in rows if not r.ok]
    for run in toy_like_reference["runs"] + toy_like_reference["variation_runs"]:
        rows = check_metrics(
            json.loads((Path(run) / "metrics.json").read_text()), toy_like_reference
        )
        assert all(r.ok for r in rows)


def test_whole_gate_false_alarm_rate_is_at_most_alpha():
    """Monte Carlo: 5 seeds of 20 independent normal metrics, then one fresh seed, 3000 times."""
    import numpy as np

    from clt_bench.report.reference_bands import build_reference

    rng = np.random.default_rng(0)
    names = [f"clt.m{i}" for i in range(20)]
    trials, alarms = 3000, 0
    draws = rng.normal(size=(trials, 6, len(names))) * 0.01 + 0.5
    for d in draws:
        heads = [dict(zip(names, row.tolist(), strict=True)) for row in d[:5]]
        ref = {"metrics": build_reference(heads, alpha=0.01)}
        fresh = dict(zip(names, d[5].tolist(), strict=True))
        alarms += not all(r.ok for r in check_metrics({"headline": fresh}, ref))
    rate = alarms / trials
    assert 0.003 <= rate <= 0.017, rate  # exact value for independent metrics: 0.995 %


def test_make_reference_takes_a_seeds_run_and_its_seed_runs(tmp_path):
    """The README's recipe: ``--clt-seeds 1,2,3`` names its seeds in ``stability``; its seed
    runs (``seeds/clt-seed2``, ...) name none. They differ only in seeds."""
    from clt_bench.report.reference_bands import make_reference

    runs = []
    for i, h in enumerate(_seed_heads()[:5]):
        stability = {"clt_seeds": [1, 2, 3] if i == 0 else [], "plt_seeds": True, "threshold": 0.7}
        path = tmp_path / f"s{i}"
        path.mkdir()
        cfg = {"clt": {"seed": i + 1}, "plt": {"seed": i + 1}, "stability": stability}
        (path / "metrics.json").write_text(json.dumps({"headline": h, "config": cfg}))
        runs.append(str(path))
    assert make_reference(runs, tmp_path / "r.json")["metrics"]
    odd = json.loads((tmp_path / "s4" / "metrics.json").read_text())
    odd["config"]["stability"]["threshold"] = 0.9  # not a seed: refused
    (tmp_path / "s4" / "metrics.json").write_text(json.dumps(odd))
    with pytest.raises(UserError, match="in 'stability.threshold'"):
        make_reference(runs, tmp_path / "r.json")


def test_make_reference_needs_five_seeds_and_same_config(tmp_path, capsys):
    from clt_bench.report.reference_bands import make_reference

    heads = _seed_heads()
    runs = [_write_run(tmp_path / f"s{i}", h) for i, h in enumerate(heads[:4])]
    with pytest.raises(UserError, match="at least 5 runs"):
        make_reference(runs, tmp_path / "r.json")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "metrics.json").write_text(
        json.dumps({"headline": heads[4], "config": {"seed": 4, "clt": {"n_features": 9}}})
    )
    with pytest.raises(UserError, match="differs .* in 'clt'"):
        make_reference([*runs, str(odd)], tmp_path / "r.json")
    ok = _write_run(tmp_path / "s4", heads[4])
    out = tmp_path / "r.json"
    assert main(["make-reference", *runs, ok, "--out", str(out)]) == 0
    assert "seed t-interval" in capsys.readouterr().out
    assert main(["check", runs[0], "--reference", str(out), "--numbers-only"]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0].split()
    assert header == ["metric", "value", "reference", "band", "policy"]
    assert "task.n_examples" in table and "exact" in table and "= 490" in table
