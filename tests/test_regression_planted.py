"""The regression gate on the planted model: `clt-bench run --model planted` end to end, in a fresh
folder, against results/reference/planted.json, and the ground-truth outputs a reader relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clt_bench.cli import main

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "reference" / "planted.json"


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ci-planted") / "run"
    assert main(["run", "--model", "planted", "--out", str(run_dir)]) == 0
    return run_dir


@pytest.mark.slow
def test_planted_run_matches_reference(planted_run, capsys):
    code = main(["check", str(planted_run), "--reference", str(REFERENCE)])
    out = capsys.readouterr().out
    assert code == 0, out


@pytest.mark.slow
def test_planted_run_grades_every_unit_kind_against_the_truth(planted_run):
    metrics = json.loads((planted_run / "metrics.json").read_text())
    assert metrics["preset"] == "planted"
    head, ci = metrics["headline"], metrics["headline_ci"]
    for kind in ("clt", "plt", "neuron"):
        for key in ("yy", "end", "rest", "planted_sites"):
            m = f"compare.effect_share_{key}_{kind}"
            lo, hi = ci[m]
            assert lo <= head[m] <= hi, m
        assert 0.0 <= head[f"compare.cmp_explained_top20_{kind}"] <= 1.05
        assert head[f"compare.yy_probe_r2_{kind}"] > 0.9
    for stage in ("graphs", "plt"):
        assert f"{stage}.influence_share_planted_sites_task_prompts" in ci
    # neurons act where the circuit was planted (strictness made the rest inert)
    assert head["compare.effect_share_planted_sites_neuron"] >= 0.75
    table = (planted_run / "compare" / "ground_truth.csv").read_text()
    assert table.splitlines()[0] == "measure,clt_features,plt_features,mlp_neurons"
    page = (planted_run / "report.html").read_text()
    assert "ground_truth.csv" in page or "YY probe held-out R^2" in page
