"""clt-bench compare-runs: side-by-side table, seeded bootstrap intervals where a metric is a
mean over prompts, paired differences on the same prompts, honest about stale files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clt_bench.cli import main
from clt_bench.io import save_tensors, write_json
from clt_bench.report.browser import check_report, find_chromium
from clt_bench.report.compare_runs import bootstrap_ci, compare_runs, write_report


def _run(
    root: Path,
    name: str,
    pd: np.ndarray,
    nmse: float,
    report: bool = True,
    task_cfg: dict | None = None,
) -> Path:
    d = root / name
    head = {"task.prob_diff": float(pd.mean()), "clt.nmse": nmse, "clt.train_seconds": 3.0}
    if report:
        write_json(d / "metrics.json", {"headline": head})
    else:  # a run without the report stage: the stage.json summaries
        write_json(d / "task" / "stage.json", {"summary": {"prob_diff": float(pd.mean())}})
        write_json(d / "clt" / "stage.json", {"summary": {"nmse": nmse}})
    write_json(d / "config.json", {"model": {"name": "toy"}, "task": task_cfg or {"n": 0}})
    save_tensors(d / "task" / "per_prompt.safetensors", {"prob_diff": torch.from_numpy(pd)})
    return d


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(1).normal(0.5, 0.2, 400)
    lo, hi = bootstrap_ci(x, 2000, seed=0)
    assert (lo, hi) == bootstrap_ci(x, 2000, seed=0)
    assert lo < x.mean() < hi
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert abs((hi - lo) - 2 * 1.96 * se) < 0.25 * 2 * 1.96 * se  # ~ the normal interval


def test_table_intervals_and_paired_differences(tmp_path, capsys):
    rng = np.random.default_rng(0)
    pd_a = rng.uniform(0.5, 1.0, 200)
    pd_b = pd_a - 0.1 + rng.normal(0, 0.01, 200)  # same prompts, 0.1 lower
    a = _run(tmp_path, "a", pd_a, 0.1)
    b = _run(tmp_path, "b", pd_b, 0.2, report=False)
    cmp = compare_runs([a, b])
    assert cmp.with_intervals == ["task.prob_diff"]
    cell_a, cell_b = cmp.cells["task.prob_diff"]
    assert cell_a.value == float(pd_a.mean()) and cell_a.ci[0] < cell_a.value < cell_a.ci[1]
    assert cmp.cells["clt.nmse"][1].value == 0.2 and cmp.cells["clt.nmse"][1].ci is None
    assert "clt.train_seconds" not in cmp.metrics
    delta = cmp.deltas["task.prob_diff"][0]
    assert delta.ci[0] < -0.1 < delta.ci[1] and delta.ci[1] - delta.ci[0] < 0.01
    out = tmp_path / "cmp.html"
    assert main(["compare-runs", str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| metric | a | b |" in text and "Paired differences" in text
    assert "only for metrics that are a mean over task prompts" in text
    assert "task.prob_diff" in text.split("only for metrics")[1]
    page = out.read_text()
    assert "<table class='data' id='tbl-runs'>" in page and "model prob. difference" in page
    forest = tmp_path / "cmp_forest.png"
    assert forest.stat().st_size > 5_000 and forest.with_suffix(".svg").is_file()
    assert "cmp_forest.png" in page and "tbl-paired" in page


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed")
def test_compare_page_is_readable_with_a_forest_plot(tmp_path):
    rng = np.random.default_rng(0)
    pd_a = rng.uniform(0.5, 1.0, 200)
    runs = [_run(tmp_path, "run_a", pd_a, 0.1)]
    runs += [_run(tmp_path, f"run_{c}", pd_a - d, 0.2) for c, d in (("b", 0.05), ("c", -0.02))]
    out = write_report(compare_runs(runs), tmp_path / "cmp.html")
    for width in (1280, 1920):
        result = check_report(out, width=width)
        assert result["broken"] == [] and result["overflow"] == []
        assert result["figures"] == 1, "the forest plot"
        problems = {
            k: result[k] for k in ("broken_words", "tall_rows", "small_text", "small_figures")
        }
        assert problems == dict.fromkeys(problems, [])


def test_different_prompts_are_not_paired_and_stale_files_get_no_interval(tmp_path):
    pd = np.linspace(0.2, 0.9, 50)
    a = _run(tmp_path, "a", pd, 0.1)
    b = _run(tmp_path, "b", pd, 0.1, task_cfg={"n": 50})
    write_json(b / "metrics.json", {"headline": {"task.prob_diff": 0.99, "clt.nmse": 0.1}})
    cmp = compare_runs([a, b])
    assert cmp.deltas["task.prob_diff"] == [None]
    assert cmp.cells["task.prob_diff"][1].ci is None
    assert any("do not average to the headline" in n for n in cmp.runs[1].notes)


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["compare-runs", str(tmp_path / "missing")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    a = _run(tmp_path, "a", np.ones(4), 0.1)
    assert main(["compare-runs", str(a), "--metrics", "clt.nope"]) == 2
    assert "no run has the metric 'clt.nope'" in capsys.readouterr().err
