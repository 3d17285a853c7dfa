"""The CI regression gate on the toy model, end to end, against the committed reference.

Runs ``clt-bench run --model toy`` (every stage) into a fresh temporary directory, so no output of
an earlier run or of other code can be resumed, and then ``clt-bench check`` against
results/reference/toy.json (bands per metric kind: clt_bench/report/reference_bands.py). A change to
the transcoder, attribution or scoring code that moves a headline number outside its band fails
here with the table of offending metrics. The same finished run, perturbed the way real regressions
look, must fail the gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clt_bench.cli import main

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "reference" / "toy.json"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ci-toy") / "run"
    assert main(["run", "--model", "toy", "--out", str(run_dir)]) == 0
    return run_dir


@pytest.mark.slow
def test_toy_default_matches_reference(toy_run, capsys):
    code = main(["check", str(toy_run), "--reference", str(REFERENCE)])
    out = capsys.readouterr().out
    assert code == 0, out


def _scale(key: str, factor: float):
    return lambda h: h.update({key: h[key] * factor})


def _shift(key: str, delta: float):
    return lambda h: h.update({key: h[key] + delta})


def _flip_target(h: dict) -> None:
    for k in [k for k in h if k.endswith(("prob_diff", "logit_diff"))]:
        h[k] = -h[k]


@pytest.mark.slow
@pytest.mark.parametrize(
    "perturb, must_fail",
    [
        (_scale("clt.nmse", 1.5), "clt.nmse"),
        (_shift("clt.replacement_prob_diff", -0.05), "clt.replacement_prob_diff"),
        (_shift("task.n_examples", -1), "task.n_examples"),
        (_flip_target, "task.prob_diff"),
    ],
    ids=["nmse_x1.5", "replacement_pd_minus_0.05", "prompt_dropped", "target_sign_flipped"],
)
def test_reference_catches_regressions(toy_run, tmp_path, capsys, perturb, must_fail):
    """The committed reference's bands are tight enough to catch each of these on the real run."""
    ref = json.loads(REFERENCE.read_text())
    assert ref.get("reference_schema") == 2, "regenerate the reference with make-reference"
    metrics = json.loads((toy_run / "metrics.json").read_text())
    perturb(metrics["headline"])
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    # the copy has no stage folders beside it: compare its numbers only
    assert main(["check", str(tmp_path), "--reference", str(REFERENCE), "--numbers-only"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert must_fail in last.split(": ", 1)[1].split(", ")


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


@pytest.mark.slow
def test_every_stage_writes_what_it_declares(toy_run):
    """``clt_bench/stages.py`` is the one place to read what a stage writes: it must be true."""
    from clt_bench.stages import STAGES

    for stage in STAGES:
        assert (toy_run / stage.name / "stage.json").is_file(), stage.name
        for name in stage.outputs:
            assert (toy_run / stage.name / name).is_file(), (stage.name, name)
    assert not (toy_run / "stability" / "seeds.csv").exists()  # no seeds: the stage does nothing


@pytest.mark.slow
def test_every_mean_over_prompts_gets_its_interval(toy_run):
    """Each headline mean over prompts has its per-prompt values stored, so the report gives it a
    bootstrap interval (none of them says "not stored per prompt")."""
    from clt_bench.report.headline import MEANS_OVER_PROMPTS

    metrics = json.loads((toy_run / "metrics.json").read_text())
    numbers = {k for k, v in metrics["headline"].items() if isinstance(v, int | float)}
    missing = sorted((MEANS_OVER_PROMPTS & numbers) - set(metrics["headline_ci"]))
    assert missing == []
    assert "not stored per prompt" not in (toy_run / "report.html").read_text()
