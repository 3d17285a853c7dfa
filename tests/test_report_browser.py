"""The report as a reader sees it: headless Chromium loads it, every image decodes, nothing
sticks out past the page, there is a table of contents, and it is readable at a laptop's and a
desktop's width (no word broken inside, no row taller than three lines, text >= 14 px, figure
text >= 10 px as displayed); plus the bootstrap intervals it shows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from clt_bench.config import load_config
from clt_bench.io import save_tensors
from clt_bench.plots import yy_zz_grid, yy_zz_heatmap
from clt_bench.report.browser import check_report, find_chromium
from clt_bench.report.stage import write_report

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report over a synthetic run: a heatmap, a wide feature table, per-prompt PD values."""
    run = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    (run / "task").mkdir()
    yy_zz_heatmap(rng.random((97, 100)), run / "task" / "heatmap.png", "p(ZZ | YY)")
    grid = {f"family {i}": rng.random((97, 100)) for i in range(8)}
    yy_zz_grid(grid, run / "task" / "families_heatmap.png", "p(ZZ | YY) per family")
    pd.DataFrame(
        {
            "family": [f"family {i}" for i in range(17)],
            "template": ["The {noun} lasted from the year {XX}{YY} to the year {XX}"] * 17,
            "example_prompt": ["The war lasted from the year 1732 to the year 17"] * 17,
            **{f"metric_{i}": rng.random(17) for i in range(12)},
        }
    ).to_csv(run / "task" / "families.csv", index=False)
    pd_values = rng.normal(0.8, 0.2, size=200)
    save_tensors(
        run / "task" / "per_prompt.safetensors", {"prob_diff": torch.from_numpy(pd_values)}
    )
    (run / "features").mkdir()
    wide = pd.DataFrame({f"column_with_a_long_name_{i}": rng.random(50) for i in range(30)})
    wide["contexts"] = ["a very long context string " * 20] * 50
    wide.to_csv(run / "features" / "features.csv", index=False)
    results = {
        "task": {"prob_diff": float(pd_values.mean()), "n_examples": 200},
        "features": {"n_comparator": 3},
    }
    ctx = SimpleNamespace(cfg=load_config("toy"), run_dir=run, results=results)
    write_report(ctx)
    return run


def test_headline_gets_a_seeded_bootstrap_interval_over_prompts(report):
    metrics = json.loads((report / "metrics.json").read_text())
    lo, hi = metrics["headline_ci"]["task.prob_diff"]
    mean = metrics["headline"]["task.prob_diff"]
    assert lo < mean < hi and 0.01 < hi - lo < 0.1  # ~ 2 x 1.96 x 0.2 / sqrt(200) = 0.055
    assert "features.n_comparator" not in metrics["headline_ci"]  # no per-prompt values: none
    assert "bootstrap" in metrics["headline_ci_method"]
    assert f"[{lo:.3g}, {hi:.3g}]" in (report / "report.html").read_text()  # 3 digits


@needs_chromium
def test_report_renders_in_chromium(report):
    shot = report / "report_top.png"
    result = check_report(report / "report.html", screenshot=shot)
    assert result["images"] >= 1 and result["broken"] == []
    assert result["overflow"] == [] and result["scroll_width"] <= result["client_width"]
    assert result["toc"] >= 3
    assert shot.stat().st_size > 10_000


@needs_chromium
@pytest.mark.parametrize("width", [1280, 1920])
def test_report_is_readable_at_laptop_and_desktop_width(report, width):
    result = check_report(report / "report.html", width=width)
    assert result["figures"] >= 2
    problems = {k: result[k] for k in ("broken_words", "tall_rows", "small_text", "small_figures")}
    counts = f"{result['n_broken_words']} words broken, {result['n_tall_rows']} rows too tall"
    assert problems == dict.fromkeys(problems, []), counts


@needs_chromium
def test_browser_check_catches_broken_images_and_overflow(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><img src='missing.png' alt='gone'>"
        "<div style='width:3000px'>wide</div></body></html>"
    )
    result = check_report(page)
    assert result["broken"] == ["gone"] and result["overflow"] and result["toc"] == 0


@needs_chromium
def test_readability_check_catches_broken_words_tall_rows_small_text_and_figures(tmp_path):
    fig = tmp_path / "fig.png"
    yy_zz_heatmap(np.random.default_rng(0).random((97, 100)), fig, "p(ZZ | YY)")
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body style='font-size:16px'><table style='width:600px;table-layout:fixed'><tr><td "
        "style='width:40px;overflow-wrap:anywhere'>"
        "unbreakable_metric_name</td><td>" + "many words " * 60 + "</td></tr></table>"
        "<p style='font-size:11px'>tiny</p><img src='fig.png' alt='fig' style='width:150px'>"
        "<img src='fig.png' alt='big' style='width:700px'></body></html>"
    )
    result = check_report(page, width=1280)
    assert any("unbreakable_metric_name" in w for w in result["broken_words"])
    assert not any("many" in w for w in result["broken_words"])  # wrapped between words: fine
    assert len(result["tall_rows"]) == 1
    assert result["small_text"] == ["p 11px"]
    assert result["figures"] == 2 and len(result["small_figures"]) == 1
    assert result["small_figures"][0].startswith("fig ")
