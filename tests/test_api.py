"""The public Python API: lazy exports, read_metrics, the methods links, docstring examples and
examples/quickstart.py (the last two run the `quick` preset: slow)."""

from __future__ import annotations

import doctest
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import clt_bench
from clt_bench.config import RunConfig, load_config
from clt_bench.errors import UserError
from clt_bench.report.headline import HEADLINE_ORDER, PUBLISHED
from clt_bench.report.links import definitions, methods_anchor, methods_path

REPO = Path(__file__).resolve().parents[1]
API = [
    "load_config",
    "load_model",
    "load_clt",
    "load_task_batch",
    "build_graph",
    "score_features",
    "run_pipeline",
    "read_metrics",
]


def test_package_import_is_lazy():
    heavy = "{'torch', 'pandas', 'transformer_lens'}"
    code = f"import sys, clt_bench; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves_with_a_runnable_example():
    assert set(API) <= set(clt_bench.__all__) and set(API) <= set(dir(clt_bench))
    for name in API:
        fn = getattr(clt_bench, name)
        assert callable(fn)
        assert ">>> " in (fn.__doc__ or ""), f"{name} has no example in its docstring"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        clt_bench.nope  # noqa: B018
    assert issubclass(clt_bench.UserError, ValueError)


def _fake_run(tmp_path: Path, headline: dict[str, float]) -> Path:
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": 1, "headline": headline}))
    return tmp_path


def test_read_metrics_orders_and_annotates(tmp_path):
    run = _fake_run(
        tmp_path, {"zz.extra": 3.0, "clt.nmse": 0.2, "task.prob_diff": 0.8, "clt.l0": 12.0}
    )
    df = clt_bench.read_metrics(run)
    assert list(df.metric) == ["task.prob_diff", "clt.nmse", "clt.l0", "zz.extra"]
    row = df.set_index("metric").loc["task.prob_diff"]
    assert (row.stage, row["name"], row.value) == ("task", "prob_diff", 0.8)
    assert row.published == PUBLISHED["task.prob_diff"][1]
    assert row.definition == "docs/methods.md#task-prob_diff"
    assert np.isnan(df.set_index("metric").loc["clt.l0", "published"])
    assert df.set_index("metric").loc["zz.extra", "definition"] == "docs/methods.md#metrics"
    with pytest.raises(UserError, match="no metrics.json"):
        clt_bench.read_metrics(tmp_path / "missing")


def test_load_config_reads_a_run_directory(tmp_path):
    cfg = load_config("toy", ["clt.n_features=96", 'graphs.target="logits"'])
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert clt_bench.load_config(str(tmp_path)) == cfg
    again = clt_bench.load_config(str(tmp_path), ["clt.n_features=32"])
    assert again.clt.n_features == 32 and again.graphs.target == "logits"
    assert RunConfig().clt.n_features != 96  # the run's value, not the default, came back


def test_methods_define_every_headline_and_reference_metric():
    defs = definitions()
    assert methods_path().is_file() and defs
    reference = json.loads((REPO / "results/reference/toy.json").read_text())["metrics"]
    keys = set(HEADLINE_ORDER) | set(PUBLISHED) | set(reference)
    missing = sorted(k for k in keys if k.replace(".", "-") not in defs)
    assert not missing, f"docs/methods.md has no anchor for {missing}"
    for key in keys:
        assert len(defs[methods_anchor(key)]) > 40, key  # a paragraph, not a stub
    for key in PUBLISHED:  # a published number needs its source paper in the definition
        assert any(w in defs[methods_anchor(key)] for w in ("Hanna", "Ameisen", "Goodfire")), key


def test_docs_cite_no_files_users_do_not_have():
    hits = []
    for path in [*REPO.glob("clt_bench/**/*.py"), *REPO.glob("docs/*.md"), *REPO.glob("*.md")]:
        text = path.read_text(encoding="utf-8")
        hits += [str(path) for w in ("SPEC-", "MEASURING.md") if w in text]
    assert not hits


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("api")


@pytest.mark.slow
def test_quickstart_runs_on_cpu_in_under_a_minute(workdir):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MPLBACKEND": "Agg",
        "CLT_BENCH_RUN": str(workdir / "no-finished-run"),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples/quickstart.py")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 60, f"quickstart took {cpu:.0f} s of CPU"  # wall time depends on the machine
    out = workdir / "results/quickstart"
    for name in ("graph.png", "feature_heatmap.png", "metrics.csv"):
        assert (out / name).stat().st_size > 0, name
    assert "task.prob_diff" in proc.stdout and "completeness" in proc.stdout
    report = (workdir / "results/quick/report.html").read_text()
    assert "href='#def-task-prob_diff'" in report and "id='def-task-prob_diff'" in report


@pytest.mark.slow
def test_docstring_examples_run(workdir, monkeypatch):
    import clt_bench.api

    monkeypatch.chdir(workdir)  # examples write results/quick (resumed if the quickstart ran)
    result = doctest.testmod(clt_bench.api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15 and result.failed == 0


@pytest.mark.slow
def test_readme_python_api_snippet_runs(workdir, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    snippet = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(workdir)
    scope: dict[str, object] = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert len(scope["scores"].table) == 8 and scope["graph"].scores
