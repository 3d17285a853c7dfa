"""The sanity flag: a model that does not do the task (shuffled weights) says so at the top of the
report, and its ratios to the model's effect are not printed beside published figures."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from clt_bench.config import load_config
from clt_bench.models import load_model
from clt_bench.pipeline import run_pipeline
from clt_bench.report.sanity import MIN_GAP, UNDEFINED, check_task, displayed, ratio_metrics

SMALL = [
    "task.family_n=0",
    "task.n=96",
    "baseline.n_examples=16",
    "baseline.discovery_examples=8",
    "baseline.max_steps=1",
    "baseline.n_random=1",
    "baseline.neuron_candidates=4",
    "baseline.neuron_examples=8",
]


def _shuffled_toy(seed: int = 0):
    """The toy with every weight tensor's entries permuted (same values, no structure)."""
    loaded = load_model("toy")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loaded.bridge.original_model.parameters():
            flat = p.data.flatten()
            p.data.copy_(flat[torch.randperm(flat.numel(), generator=g)].view_as(p))
    return dataclasses.replace(loaded, name="toy")


def _run(tmp_path, name, model):
    cfg = load_config("toy", SMALL)
    run_pipeline(
        cfg,
        tmp_path / name,
        stages=["task", "baseline", "report"],
        model=model,
        progress=lambda line: None,
    )
    run = tmp_path / name
    return (run / "summary.md").read_text(), (run / "report.html").read_text()


@pytest.mark.slow
def test_shuffled_model_is_flagged(tmp_path):
    md, page = _run(tmp_path, "shuffled", _shuffled_toy())
    head = md.split("| metric |")[0]
    assert "does not do the task" in head  # above the table
    assert page.index("does not do the task") < page.index("id='headline'")
    row = next(line for line in md.splitlines() if "| baseline.faithfulness_paths_ratio |" in line)
    assert row.split("|")[2].strip() == UNDEFINED and row.split("|")[4].strip() == "0.89"
    metrics = json.loads((tmp_path / "shuffled" / "metrics.json").read_text())
    assert metrics["sanity"]["model_does_task"] is False
    assert isinstance(metrics["headline"]["baseline.faithfulness_components_ratio"], float)
    # control: the toy itself does the task, and its ratios are numbers
    md, page = _run(tmp_path, "toy", load_model("toy"))
    assert "does not do the task" not in md and "does not do the task" not in page
    row = next(
        line for line in md.splitlines() if "| baseline.faithfulness_components_ratio |" in line
    )
    assert float(row.split("|")[2]) > 0  # a number, not "undefined"


def test_flag_rule():
    ok = check_task({"task.prob_diff": 0.81, "task.corrupted_prob_diff": -0.43})
    assert ok.ok and not ok.message
    same = check_task({"task.prob_diff": 0.3, "task.corrupted_prob_diff": 0.3 - MIN_GAP / 2})
    assert not same.ok and "nearly the same" in same.message
    low = check_task({"task.prob_diff": 1e-4, "task.corrupted_prob_diff": -0.5})
    assert not low.ok and "below" in low.message
    assert not check_task({"task.prob_diff": float("nan"), "task.corrupted_prob_diff": 0.0}).ok
    assert check_task({"clt.nmse": 0.1}).ok  # no task stage: nothing to judge
    headline = {
        "task.prob_diff": 1e-4,
        "task.corrupted_prob_diff": 0.0,
        "baseline.faithfulness_paths_ratio": 0.988,
        "compare.replacement_pd_ratio": 1.48,
        "compare.clt_units_80": 3,
        "clt.nmse": 0.2,
    }
    assert ratio_metrics(headline) == [
        "baseline.faithfulness_paths_ratio",
        "compare.clt_units_80",
        "compare.replacement_pd_ratio",
    ]
    shown = displayed(headline, check_task(headline))
    assert shown["clt.nmse"] == 0.2 and shown["task.prob_diff"] == 1e-4
    assert all(shown[k] == UNDEFINED for k in ratio_metrics(headline))
    assert displayed(headline, ok) is headline


def test_terminal_headline_has_published_figures_only_for_their_task():
    from dataclasses import replace

    from clt_bench.report.headline import PUBLISHED, headline_table
    from clt_bench.report.task_words import UNKNOWN

    metric = next(k for k in PUBLISHED if k.startswith("task.") and PUBLISHED[k][1] is not None)
    summary = {"headline": {metric: 0.5}}
    published = f"{PUBLISHED[metric][1]:.3g}"
    assert published in headline_table(summary)  # no task words: as before
    assert published in headline_table(summary, replace(UNKNOWN, published_defined=True))
    other = replace(UNKNOWN, task="prices", template="t", published_defined=False)
    table = headline_table(summary, other)
    assert published not in table.split(metric)[1]
    assert "no published figure for task prices" in table
