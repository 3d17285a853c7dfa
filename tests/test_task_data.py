"""Tasks are data (issue 22): bad task data is one sentence naming the file and the key, before any
stage; derived-year slots, consecutive / stepped sequences and exact answers; the graph prompt and
target, the label scheme and the ratios follow the task's relation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import GT_TEMPLATE, task_head
from hypothesis import given, settings
from hypothesis import strategies as st

from clt_bench.baseline.faithfulness import ratio_undefined_reason
from clt_bench.cli import main
from clt_bench.errors import UserError
from clt_bench.features.shape_scores import YY_VALUES, ZZ_VALUES, label_decision, shape_scores
from clt_bench.graphs.prompt import task_graph_prompt
from clt_bench.graphs.targets import greater_than_coefficients
from clt_bench.models.tokenizer import gpt2_tokenizer
from clt_bench.paths import tasks_dir
from clt_bench.task.dataset import build_dataset, check_task_tokens
from clt_bench.task.spec import load_task


def write_task(
    tmp_path: Path, body: str, nouns: str = "war\npeace\nking\n", head: str = ""
) -> Path:
    d = tmp_path / "task"
    d.mkdir(exist_ok=True)
    (d / "task.toml").write_text(head + task_head() + body)
    (d / "nouns.txt").write_text(nouns)
    return d


def one_sentence(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0, err
    for n in needles:
        assert n in err, err
    return err


def run_cli(task: Path, tmp_path: Path, command: str = "task") -> int:
    out = tmp_path / "run"
    argv = [command, "--model", "toy", "--task", str(task), "--out", str(out)]
    argv += ["--set", "task.family_n=0"] if command == "task" else ["--stages", "task,baseline"]
    return main(argv)


# ---- bad task data: one sentence naming the file and the key, exit 2, no stage ran ----------


@pytest.mark.parametrize(
    "head, body, key",
    [
        ("", GT_TEMPLATE + "colour = 'red'\n", "'templates.t.colour'"),
        ("speed = 3\n", GT_TEMPLATE, "'speed'"),
        ("", GT_TEMPLATE.replace("[templates.t]", "[templates.t]\nstep = 1"), "templates.t.step"),
        ("", GT_TEMPLATE + "[graph]\nprompt = 'x 1711 to 17'\nsize = 3\n", "'graph.size'"),
        (
            "",
            "[datasets.h]\nn = 5\nsampling = 'uniform'\nseed = 1\nsize = 3\n" + GT_TEMPLATE,
            "datasets.h.size",
        ),
    ],
    ids=["template_key", "top_level_key", "step_without_arithmetic", "graph_key", "dataset_key"],
)
def test_unknown_task_keys_are_one_sentence(tmp_path, capsys, head, body, key):
    task = write_task(tmp_path, body, head=head)
    assert run_cli(task, tmp_path, "run") == 2
    err = one_sentence(capsys, str(task / "task.toml"), key)
    if "unknown key" in err:
        assert "allowed:" in err
    assert not (tmp_path / "run" / "task").exists()  # before any stage


def test_unknown_answers_key_names_the_allowed_ones(tmp_path, capsys):
    task = write_task(tmp_path, GT_TEMPLATE)
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace("count = 100", "count = 100\nunits = 'cents'"))
    assert run_cli(task, tmp_path) == 2
    one_sentence(capsys, str(toml), "'answers.units'", "allowed: count, label, question_label")


def test_unknown_slot_is_one_sentence(tmp_path, capsys):
    task = write_task(tmp_path, GT_TEMPLATE.replace("{XX}{YY} to", "{XX}{YY1} to"))
    assert run_cli(task, tmp_path, "run") == 2
    one_sentence(capsys, str(task / "task.toml"), "text has the unknown slot '{YY1}'")
    assert not (tmp_path / "run" / "task").exists()


def test_multi_token_nouns_are_counted_and_named_before_any_stage(tmp_path, capsys):
    task = write_task(tmp_path, GT_TEMPLATE, nouns="war\nduke\npeace\nxylophonist\n")
    assert run_cli(task, tmp_path, "run") == 2
    one_sentence(
        capsys, str(task / "task.toml"), "nouns_file has 2 of 4", "'duke'", "'xylophonist'"
    )
    assert not (tmp_path / "run" / "task").exists()
    assert run_cli(task, tmp_path, "task") == 2  # the task command checks them too
    one_sentence(capsys, "nouns_file has 2 of 4")


def test_a_familys_own_multi_token_nouns_name_its_key(tmp_path):
    fam = '[families.f]\ntext = "The {noun} costs $ {XX}{YY} to $ {XX}"\nnouns = ["gem", "duke"]\n'
    spec = load_task(write_task(tmp_path, GT_TEMPLATE + fam))
    with pytest.raises(UserError, match=r"families\.f\.nouns has 1 of 2 .*'duke'"):
        check_task_tokens(spec, gpt2_tokenizer())


def test_an_empty_answer_space_is_one_sentence(tmp_path, capsys):
    task = write_task(tmp_path, GT_TEMPLATE)
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace("count = 100", "count = 2"))
    assert run_cli(task, tmp_path) == 2
    one_sentence(capsys, str(toml), "answers.count = 2", "empty answer space")


SHRINK = [
    "task.family_n=0",
    "baseline.n_examples=24",
    "baseline.discovery_examples=12",
    "baseline.n_random=1",
    "baseline.neuron_examples=12",
    "baseline.neuron_candidates=2",
    "baseline.max_steps=1",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "body, count, relation",
    [
        (
            '[templates.t]\ntext = "{XX}{YY}, {XX}"\nrelation = "exact"\nanswer = "YY+1"\n',
            100,
            "exact",
        ),
        (GT_TEMPLATE, 60, "gt"),
    ],
    ids=["exact", "answers_60"],
)
def test_exact_and_smaller_answer_spaces_run_the_stages_after_task(tmp_path, body, count, relation):
    """The stages after ``task`` score an exact template and a smaller answer space (they used
    to stop before them); the baseline's numbers follow the task's relation and answer count."""
    import json

    task = write_task(tmp_path, body)
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace("count = 100", f"count = {count}"))
    out = tmp_path / "run"
    argv = ["run", "--model", "toy", "--task", str(task), "--out", str(out)]
    argv += ["--stages", "task,baseline"] + [a for s in SHRINK for a in ("--set", s)]
    assert main(argv) == 0
    circuit = json.loads((out / "baseline" / "circuit.json").read_text())
    assert circuit["provenance"]["relation"] == relation
    faith = json.loads((out / "baseline" / "faithfulness.json").read_text())
    assert np.isfinite(faith["model_prob_diff"]) and np.isfinite(faith["model_logit_diff"])
    if faith["model_prob_diff"] <= 0:  # a ratio to a non-positive PD is undefined, not a number
        assert faith["faithfulness_components_ratio"] is None
        assert "not positive" in faith["faithfulness_ratio_undefined_reason"]
    outer = json.loads((out / "baseline" / "neurons.json").read_text())["outer_products"]
    for m in outer.values():  # rows YY = 2..98 below the answer count, one column per answer
        assert len(m) == len(range(2, min(99, count))) and {len(r) for r in m} == {count}


def test_the_task_stage_heatmap_follows_the_answer_space(tmp_path):
    import json

    task = write_task(tmp_path, GT_TEMPLATE)
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace("count = 100", "count = 60"))
    assert run_cli(task, tmp_path, "task") == 0
    m = json.loads((tmp_path / "run" / "task" / "metrics.json").read_text())
    heat = m["heatmap_matrix"]
    assert len(heat) == len(range(2, 60)) and {len(r) for r in heat} == {60}


# ---- expressiveness: derived years, consecutive and stepped sequences, exact answers ---------


def test_hannas_five_year_sequence_with_derived_slots(tmp_path):
    body = (
        '[templates.five]\ntext = "The {noun} lasted {XX}{YY-3}, {XX}{YY-2}, {XX}{YY-1}, '
        '{XX}{YY}, {XX}"\nrelation = "exact"\nanswer = "YY+1"\ncounterfactual = "05"\n'
    )
    spec = load_task(write_task(tmp_path, body))
    tok = gpt2_tokenizer()
    b = build_dataset(spec, tok, "discovery")
    for prompt, year, ans, corr in zip(b.prompts, b.years, b.answer, b.corrupted, strict=True):
        c, yy = year // 100, year % 100
        want = f"{c}{yy - 3:02d}, {c}{yy - 2:02d}, {c}{yy - 1:02d}, {year}, {c}"
        assert prompt.endswith(f"lasted {want}")
        assert int(ans) == yy + 1
        text = tok.decode(corr.tolist())  # every year follows the counterfactual YY = 05
        assert text.endswith(f"lasted {c}02, {c}03, {c}04, {c}05, {c}")
    assert all(3 <= y % 100 <= 98 for y in b.years)  # derived and answer years stay two-digit


def test_consecutive_and_stepped_sequences(tmp_path):
    body = (
        '[templates.c]\ntext = "{prev2}, {prev1}, {XX}{YY}, {XX}"\nsequence = "consecutive"\n'
        'relation = "exact"\n'
        '[families.s]\ntext = "{prev2}, {prev1}, {XX}{YY}, {XX}"\nsequence = "arithmetic"\n'
        'step = 3\nrelation = "exact"\n'
    )
    spec = load_task(write_task(tmp_path, body))
    tok = gpt2_tokenizer()
    for name, step in (("c", 1), ("s", 3)):
        b = build_dataset(spec, tok, "discovery", name)
        y = b.years[0]
        assert b.prompts[0].endswith(f"{y - 2 * step}, {y - step}, {y}, {y // 100}")
        assert torch.equal(b.answer, b.yy + step)


# ---- the graph prompt and target follow the task ------------------------------------------


def test_graph_prompt_is_the_tasks_own_example_with_bos(tmp_path):
    body = GT_TEMPLATE.replace("[templates.t]", '[templates.t]\nrelation = "lt"')
    spec = load_task(write_task(tmp_path, body))
    gp = task_graph_prompt(spec, gpt2_tokenizer())
    assert gp.text.startswith("<|endoftext|> The war lasted from the year ")
    assert int(gp.tokens[0]) == gpt2_tokenizer().bos_token_id
    year = int(re.findall(r"\d{4}", gp.text)[-1])
    assert gp.target.relation == "lt" and gp.target.yy == year % 100
    over = task_graph_prompt(spec, gpt2_tokenizer(), "The war lasted from 1650 to 16")
    assert over.source == "graphs.prompt" and over.target.yy == 50


def test_greater_than_task_keeps_its_graph_prompt():
    spec = load_task("greater_than")
    gp = task_graph_prompt(spec, gpt2_tokenizer())
    assert gp.text == "<|endoftext|> The war lasted from the year 1711 to the year 17"
    from clt_bench.graphs.build import prompt_tokens

    old, _ = prompt_tokens(gpt2_tokenizer(), "The war lasted from the year 1711 to the year 17")
    assert torch.equal(gp.tokens, old)  # the graph of the default run is unchanged


@given(yy=st.integers(2, 97), relation=st.sampled_from(["gt", "lt", "exact"]))
@settings(max_examples=40, deadline=None)
def test_task_target_rewards_the_relations_correct_answers(yy, relation):
    answer = yy + 1 if relation == "exact" else None
    c = greater_than_coefficients(yy, relation, 100, answer)
    assert abs(float(c.sum())) < 1e-12  # shift-invariant
    z = torch.arange(100)
    good = {"gt": z > yy, "lt": z < yy, "exact": z == (answer or -1)}[relation]
    assert bool((c[good] > 0).all()) and bool((c[~good] < 0).all())


# ---- labels: a perfect comparator of each relation, and the swapped relation -----------------

SWAP = {"gt": "lt", "lt": "gt"}


def perfect(relation: str, shift: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    y, z = YY_VALUES[:, None], ZZ_VALUES[None, :]
    answers = np.clip(YY_VALUES + shift, 0, 99)
    good = {"gt": z > y, "lt": z < y, "exact": z == answers[:, None]}[relation]
    return scale * np.where(good, 1.0, -0.3), answers


@given(
    relation=st.sampled_from(["gt", "lt", "exact"]),
    shift=st.integers(1, 3),
    scale=st.floats(0.01, 100.0),
)
@settings(max_examples=30, deadline=None)
def test_a_perfect_comparator_of_each_relation_and_the_swap(relation, shift, scale):
    heat, answers = perfect(relation, shift, scale)
    s = shape_scores(heat, YY_VALUES, relation, answers)
    assert s.gt_corr > 0.99
    assert label_decision(s, 1.0, relation=relation).label == "comparator"
    if relation == "exact":  # the answer moved to the other side of YY: no longer the task's
        other = np.clip(YY_VALUES - shift, 0, 99)
        s2 = shape_scores(heat, YY_VALUES, "exact", other)
        assert s2.gt_corr < 0.1
        assert label_decision(s2, 1.0, relation="exact").label != "comparator"
    else:
        s2 = shape_scores(heat, YY_VALUES, SWAP[relation])
        assert s2.gt_corr < -0.9
        assert label_decision(s2, 1.0, relation=SWAP[relation]).label == "anti-task"


@given(
    row=st.integers(0, 200),
    shift=st.integers(1, 3),
    n_answers=st.sampled_from([50, 100]),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=30, deadline=None)
def test_a_perfect_exact_answer_feature_is_a_comparator_with_a_positive_task_score(
    row, shift, n_answers, scale, seed
):
    """A feature that promotes each prompt's one answer (and nothing else) on an exact task of
    any answer count: comparator label, a positive score on the task's target (logit difference
    and first-order PD); with the answer moved to the other side of YY it is neither."""
    from clt_bench.task.metrics import prob_diff_per_example

    rows = np.array([y for y in range(2, min(99, n_answers)) if y + shift < n_answers])
    answers = rows + shift
    z = np.arange(n_answers)[None, :]
    heat = scale * np.where(z == answers[:, None], 1.0, -0.3)  # [rows, A]
    s = shape_scores(heat, rows, "exact", answers)
    assert s.gt_corr > 0.99
    assert label_decision(s, 1.0, relation="exact").label == "comparator"
    r = row % len(rows)
    y, a, e = int(rows[r]), int(answers[r]), torch.from_numpy(heat[r])
    assert float(greater_than_coefficients(y, "exact", n_answers, a) @ e) > 0
    # first-order PD: d/dt PD(logits + t * e) at t = 0, on any logits (answers then 20 others)
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_answers + 20, generator=gen, dtype=torch.float64) * 3
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    moved = logits + t * torch.cat([e, torch.zeros(20, dtype=torch.float64)])
    p = torch.softmax(moved, -1)[None, :n_answers]
    pd = prob_diff_per_example(p, torch.tensor([y]), "exact", torch.tensor([a]))
    (grad,) = torch.autograd.grad(pd.sum(), t)
    assert float(grad) > 0
    wrong = np.clip(rows - shift, 0, None)  # the answer on the other side of YY
    s2 = shape_scores(heat, rows, "exact", wrong)
    assert s2.gt_corr < 0.1 and label_decision(s2, 1.0, relation="exact").label != "comparator"
    assert float(greater_than_coefficients(y, "exact", n_answers, int(wrong[r])) @ e) < 0


def test_a_less_than_comparator_on_a_less_than_task_is_not_anti_task():
    heat, _ = perfect("lt", 1, 1.0)
    gt = shape_scores(heat)  # scored as if the task were greater-than (the old behaviour)
    assert gt.gt_corr < -0.9 and label_decision(gt, 1.0).label == "anti-task"
    lt = shape_scores(heat, YY_VALUES, "lt")
    assert lt.gt_corr > 0.99 and label_decision(lt, 1.0, relation="lt").label == "comparator"


# ---- ratios to the model's PD -------------------------------------------------------------


@pytest.mark.parametrize("model_pd", [-0.3, 0.0, float("nan")])
def test_a_ratio_to_a_non_positive_model_pd_is_undefined(model_pd):
    assert "not positive" in ratio_undefined_reason(model_pd)


def test_a_ratio_to_a_positive_model_pd_is_defined():
    assert ratio_undefined_reason(0.8) == ""


def test_the_greater_than_task_file_still_loads_with_all_its_families():
    spec = load_task("greater_than")
    assert (spec.graph_noun, spec.graph_year) == ("war", 1711)
    assert spec.question_label == "start year YY" and len(spec.families) == 12
    assert spec.path == tasks_dir() / "greater_than" / "task.toml"
