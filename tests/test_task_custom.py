"""A user's own task directory runs through the CLI with no code change (--task PATH)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from clt_bench.cli import main
from clt_bench.config import load_config
from clt_bench.errors import UserError
from clt_bench.task.spec import load_task

TASK_TOML = """
name = "reign"
nouns_file = "rulers.txt"
default_template = "reign"

[year_filter]
start = 1100
stop = 1900

[corruption]
yy = "01"

[answers]
count = 100

[datasets.discovery]
n = 60
sampling = "balanced"
seed = 3

[templates.reign]
text = "The {noun} reigned from {XX}{YY} until {XX}"
bos = true
"""

SHRINK = [
    "task.family_n=8",
    "baseline.n_examples=40",
    "baseline.discovery_examples=20",
    "baseline.n_random=2",
    "baseline.neuron_examples=20",
    "baseline.neuron_candidates=4",
    "baseline.max_steps=1",
]


@pytest.fixture()
def task_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mytask"
    d.mkdir()
    (d / "task.toml").write_text(TASK_TOML)
    (d / "rulers.txt").write_text("king\nqueen\nprince\n")
    return d


def test_task_path_forms(task_dir, tmp_path, monkeypatch):
    by_dir, by_file = load_task(task_dir), load_task(task_dir / "task.toml")
    assert by_dir.nouns == by_file.nouns == ("king", "queen", "prince")  # resolved beside the file
    assert by_dir.default_template == "reign"
    monkeypatch.chdir(tmp_path)
    assert load_task("./mytask").path == (task_dir / "task.toml").relative_to(tmp_path)
    with pytest.raises(UserError, match="holds no task.toml"):
        load_task(str(tmp_path) + "/")
    with pytest.raises(UserError, match="does not exist"):
        load_task(tmp_path / "missing.toml")


def test_config_default_template_is_the_task_files():
    assert load_config("toy").task.template == ""


def test_cli_task_on_own_task_dir(task_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["task", "--task", str(task_dir), "--out", str(out), "--set", "task.family_n=8"]
    assert main(argv) == 0
    metrics = json.loads((out / "task" / "metrics.json").read_text())
    assert metrics["template"] == "reign"  # the task file's default, not the config's
    assert metrics["example_prompt"].startswith("<|endoftext|> The ")
    assert Path(metrics["task_file"]) == (task_dir / "task.toml").resolve()
    rows = list(csv.DictReader((out / "task" / "families.csv").open()))
    assert [r["name"] for r in rows] == ["reign"] and rows[0]["n"] == "8"
    assert (out / "task" / "families_heatmap.png").is_file()
    code = main(["task", "--task", str(task_dir), "--template", "hanna", "--out", str(out)])
    assert code == 2 and "unknown template 'hanna'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_run_task_and_baseline_on_own_task_dir(task_dir, tmp_path):
    out = tmp_path / "run"
    argv = [
        "run",
        "--model",
        "toy",
        "--stages",
        "task,baseline",
        "--task",
        str(task_dir / "task.toml"),
    ]
    argv += ["--out", str(out)] + [a for s in SHRINK for a in ("--set", s)]
    assert main(argv) == 0
    for stage in ("task", "baseline"):
        assert (out / stage / "stage.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"]["task"] == str((task_dir / "task.toml").resolve())
    assert (out / "baseline" / "circuit.json").is_file()


def test_edited_task_data_changes_the_stage_hash(task_dir):
    from clt_bench.pipeline import stage_hash

    cfg = load_config("toy", [f'task.task="{task_dir}"'])
    before = {s: stage_hash(cfg, s) for s in ("task", "baseline", "clt")}
    (task_dir / "rulers.txt").write_text("king\nqueen\n")
    after = {s: stage_hash(cfg, s) for s in ("task", "baseline", "clt")}
    assert before["task"] != after["task"] and before["baseline"] != after["baseline"]
    # the clt stage scores its CLT on the task's prompts (replacement_prob_diff): stale too
    assert before["clt"] != after["clt"]
