"""The CI regression gate: the toy default, end to end, against the committed reference.

Runs ``clt-bench run`` (every stage; finished stages resume) into results/ci-toy and then
``clt-bench check`` against results/reference/toy.json, whose tolerances come from the spread over
seeds. A change to the transcoder, attribution or scoring code that moves a headline number outside
its tolerance fails here with the table of offending metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clt_bench.cli import main

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "reference" / "toy.json"


@pytest.fixture(scope="module")
def toy_run() -> Path:
    run_dir = REPO / "results" / "ci-toy"
    assert main(["run", "--out", str(run_dir)]) == 0
    return run_dir


@pytest.mark.slow
def test_toy_default_matches_reference(toy_run, capsys):
    code = main(["check", str(toy_run), "--reference", str(REFERENCE)])
    out = capsys.readouterr().out
    assert code == 0, out


@pytest.mark.slow
def test_run_writes_report_and_provenance(toy_run):
    metrics = json.loads((toy_run / "metrics.json").read_text())
    assert metrics["schema_version"] == 1
    assert {"config", "versions", "git_commit", "seeds", "headline"} <= set(metrics)
    head = metrics["headline"]
    for key in (
        "task.prob_diff",
        "baseline.faithfulness_paths_ratio",
        "clt.nmse",
        "clt.replacement_top1_agreement",
    ):
        assert key in head
    html = (toy_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert (toy_run / "summary.md").is_file()
    for stage in ("task", "baseline", "activations", "clt", "graphs", "features", "compare"):
        assert (toy_run / stage / "stage.json").is_file(), stage
