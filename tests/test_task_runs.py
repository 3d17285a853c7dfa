"""Every stage follows the task file (issue 22): the quick preset on task directories written
here -- greater-than years, less-than years, a price task that is not about years, Hanna's
consecutive-years sequence with one exact answer, and greater-than years over 50 answers -- and
each stage's outputs carry the task's own prompt, relation, answer count and labels, while the
report and summary.md name the task and template and hold none of the other tasks' words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clt_bench.cli import main
from clt_bench.features.shape_scores import LABELS, shape_scores
from clt_bench.io import load_tensors

BASE = """
name = "{name}"
nouns_file = "nouns.txt"

[year_filter]
start = 1100
stop = 1900

[corruption]
yy = "{corrupt}"

[answers]
count = {count}
{labels}

[datasets.discovery]
n = 64
sampling = "balanced"
seed = 0

[templates.{template}]
text = "{text}"
relation = "{relation}"
{extra}"""

TASKS = {
    "gt_years": dict(
        name="reigns",
        corrupt="01",
        labels='label = "end year ZZ"\nquestion_label = "start year YY"',
        template="reign",
        text="The {noun} reigned from the year {XX}{YY} to the year {XX}",
        relation="gt",
        nouns="king\nqueen\nprince\n",
        correct="ZZ > YY",
        own=("greater-than", "01-corrupted", "start year YY"),
        foreign=("less-than", "99-corrupted", "price"),
    ),
    "lt_years": dict(
        name="before",
        corrupt="99",
        labels='label = "start year ZZ"\nquestion_label = "end year YY"',
        template="ended",
        text="The {noun} ended in the year {XX}{YY} and started in the year {XX}",
        relation="lt",
        nouns="war\npeace\nking\n",
        correct="ZZ < YY",
        own=("less-than", "99-corrupted", "end year YY"),
        foreign=("greater-than", "01-corrupted", "price"),
    ),
    "gt_prices": dict(
        name="prices",
        corrupt="01",
        labels='label = "highest price ZZ (last two digits)"\n'
        'question_label = "lowest price YY (last two digits)"',
        template="price",
        text="The price of that {noun} ranges from $ {XX}{YY} to $ {XX}",
        relation="gt",
        nouns="gem\nwatch\nring\nbike\n",
        correct="ZZ > YY",
        own=("greater-than", "lowest price YY", "highest price ZZ"),
        foreign=("less-than", "99-corrupted", "start year", "end year"),
    ),
    "exact_years": dict(
        name="five_years",
        corrupt="05",
        labels='label = "next year ZZ"\nquestion_label = "last year YY"',
        template="five",
        text="The {noun} lasted {XX}{YY-3}, {XX}{YY-2}, {XX}{YY-1}, {XX}{YY}, {XX}",
        relation="exact",
        extra='answer = "YY+1"\n',
        nouns="war\npeace\nking\n",
        correct="ZZ = the answer",
        own=("exact-answer", "05-corrupted", "last year YY", "next year ZZ"),
        foreign=("greater-than", "less-than", "01-corrupted", "start year", "ZZ > YY"),
    ),
}
# the reigns task with 50 answers (ZZ = 00..49)
TASKS["gt_years_50"] = {
    **TASKS["gt_years"],
    "name": "reigns50",
    "count": 50,
    "foreign": ("less-than", "99-corrupted", "price", "exact-answer"),
}


def _text(run: Path) -> str:
    """report.html without its embedded images, and summary.md."""
    page = (run / "report.html").read_text(encoding="utf-8")
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    return page + (run / "summary.md").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("which", list(TASKS))
def test_every_stage_follows_the_task_file(tmp_path, which):
    t = TASKS[which]
    d = tmp_path / which
    d.mkdir()
    (d / "task.toml").write_text(BASE.format(**{"count": 100, "extra": "", **t}))
    (d / "nouns.txt").write_text(t["nouns"])
    run = tmp_path / "run"
    argv = ["run", "--preset", "quick", "--task", str(d), "--out", str(run), "--serial"]
    assert main(argv) == 0

    task = json.loads((run / "task" / "metrics.json").read_text())
    assert (task["template"], task["relation"]) == (t["template"], t["relation"])
    graphs = json.loads((run / "graphs" / "scores.json").read_text())
    noun = t["nouns"].split()[0]
    assert graphs["relation"] == t["relation"] and graphs["prompt_template"] == t["template"]
    assert graphs["prompt"].startswith(f"<|endoftext|> {t['text'].split('{')[0]}{noun}")
    assert "the task's example" in graphs["prompt_source"]
    assert t["own"][0] in graphs["target_definition"]
    assert graphs["targets"][0]["label"].startswith(t["own"][0])
    assert "seed_prompt_skipped" in graphs["influence_share"]  # no goodfire template here
    features = (run / "features" / "features.md").read_text()
    assert f"{t['own'][0]} logit difference (template '{t['template']}')" in features
    assert f"relative to the task's relation {t['correct']}" in features
    circuit = json.loads((run / "baseline" / "circuit.json").read_text())
    assert t["own"][0] in json.dumps(circuit)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"]["task"] == t["name"] and metrics["task"]["template"] == t["template"]

    # every answer axis has the task's answer count, heatmap rows YY = 2..98 below it
    count = t.get("count", 100)
    yy_rows = np.arange(2, min(99, count))
    assert np.array(task["heatmap_matrix"], dtype=float).shape == (len(yy_rows), count)
    heat = load_tensors(run / "features" / "heatmaps.safetensors")["heatmaps"].numpy()
    assert heat.shape[1:] == (len(yy_rows), count)
    outer = json.loads((run / "baseline" / "neurons.json").read_text())["outer_products"]
    assert outer and all(np.array(m).shape == (len(yy_rows), count) for m in outer.values())
    # a ratio to a model PD that is not positive is undefined, with its reason
    compare = json.loads((run / "compare" / "metrics.json").read_text())
    if compare["model_prob_diff"] <= 0:
        assert compare["replacement_pd_ratio"] is None
        assert "not positive" in compare["replacement_pd_ratio_undefined_reason"]
    # labels relative to the task's relation (exact: 1[ZZ = YY + 1]) over its answers
    table = pd.read_csv(run / "features" / "features.csv")
    assert set(table["label"]) <= set(LABELS)
    answers = yy_rows + 1 if t["relation"] == "exact" else None
    scores = shape_scores(heat[0].astype(float), yy_rows, t["relation"], answers)
    assert scores.gt_corr == pytest.approx(table["gt_corr"][0], abs=1e-4)

    text = _text(run)
    header = f"task {t['name']} ({(d / 'task.toml').resolve()}) · template {t['template']}: "
    assert text.count(header) == 2  # report.html and summary.md
    for word in t["own"]:
        assert word in text, word
    for word in t["foreign"]:
        assert word not in text, word
    # the published greater-than figures are defined for none of these task files
    assert "no published figure for task " + t["name"] in text
