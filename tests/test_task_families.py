"""Hanna et al.'s prompt families as task data: spec, construction, metrics, and the toy."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from clt_bench.errors import UserError
from clt_bench.task.dataset import (
    arithmetic_step,
    build_dataset,
    encode_prompt,
)
from clt_bench.task.metrics import (
    cutoff_sharpness_per_example,
    prob_diff_per_example,
)
from clt_bench.task.spec import load_task

# Hanna's generalisation script, options 0-9 -> (family, relation, counterfactual start year)
HANNA = {
    "started_ended": ("gt", "1701"),
    "happened_later": ("gt", "1701"),
    "sequence": ("gt", "1701"),
    "descending": ("lt", "1699"),
    "arithmetic_exact": ("exact", None),
    "smaller_than": ("gt", "1701"),
    "ended_started": ("lt", "1799"),
    "bc": ("lt", "799"),
    "price": ("gt", "1701"),
    "random_sequence": ("gt", None),
}


def test_all_ten_hanna_families_with_counterfactuals_and_sources(task_spec):
    for name, (relation, _) in HANNA.items():
        tpl = task_spec.families[name]
        assert tpl.relation == relation, name
        assert "Hanna" in tpl.source, name
        assert tpl.metric.startswith("PD = "), name
    assert task_spec.families["descending"].year_range == (1602, 1699)
    assert task_spec.families["bc"].year_range == (702, 799)
    assert task_spec.families["price"].nouns[:3] == ("gem", "necklace", "watch")
    assert task_spec.families["random_sequence"].n_prev == 4
    assert not task_spec.families["random_sequence"].bos
    assert "1781" not in task_spec.families["descending"].text  # the old non-Hanna sequence


@pytest.mark.parametrize("name", sorted(HANNA))
def test_family_counterfactual_year(task_spec, tokenizer, name):
    batch = build_dataset(task_spec, tokenizer, "discovery", name, n=97)
    assert len({len(p) for p in batch.clean}) == 1 and batch.clean.shape == batch.corrupted.shape
    relation, cf_year = HANNA[name]
    assert batch.relation == relation
    for i in range(0, 97, 16):
        clean, corrupt = tokenizer.decode(batch.clean[i]), tokenizer.decode(batch.corrupted[i])
        if cf_year is not None:  # a token swap at YY: the start year becomes the counterfactual
            diff = (batch.clean[i] != batch.corrupted[i]).nonzero()[:, 0].tolist()
            assert diff == [batch.yy_pos]
            assert f" {cf_year}" in corrupt and f"{batch.years[i]}" in clean
        if name == "random_sequence":  # five random years of one century, the last one -> 01
            years = [int(y) for y in re.findall(r"\d{4}", clean)]
            assert len({y // 100 for y in years}) == 1 and years[-1] == batch.years[i]
            assert corrupt.endswith(f"{batch.years[i] // 100}01, {batch.years[i] // 100}")
            assert not clean.startswith("<|endoftext|>")
    if name == "bc":
        assert all(702 <= y < 799 for y in batch.years)
        assert all(len(tokenizer.encode(f" {y}")) == 2 for y in batch.years)  # 720 etc. dropped


def test_arithmetic_sequence_and_exact_answer(task_spec, tokenizer):
    assert [arithmetic_step(y) for y in (1702, 1703, 1760, 1712)] == [3, 2, 7, 5]
    tpl = task_spec.families["arithmetic_exact"]
    enc = encode_prompt(tpl, "war", 1702, tokenizer, (1699, 1696, 1693, 1690))
    assert enc.text == "<|endoftext|> 1690, 1693, 1696, 1699, 1702, 17"
    batch = build_dataset(task_spec, tokenizer, "discovery", "arithmetic_exact", n=97)
    for y, a in zip(batch.years, batch.answer.tolist(), strict=True):
        assert a == y % 100 + arithmetic_step(y) <= 99  # the answer stays in the century
    assert tokenizer.decode(batch.corrupted[0]).endswith("1693, 1695, 1697, 1699, 1701, 17")
    assert 1798 not in batch.years  # 1798 + 3 leaves the century


def test_exact_metrics_hand_values():
    p = torch.zeros(2, 100, dtype=torch.float64)
    p[0, 20], p[0, 19], p[0, 21], p[0, 50] = 0.4, 0.1, 0.2, 0.3
    p[1, 20], p[1, 60] = 0.1, 0.5
    yy, ans = torch.tensor([15, 15]), torch.tensor([20, 20])
    pd = prob_diff_per_example(p, yy, "exact", ans)
    assert torch.allclose(pd, torch.tensor([0.4 - 0.3, 0.1 - 0.5], dtype=torch.float64))
    cs = cutoff_sharpness_per_example(p, yy, "exact", ans)
    assert torch.allclose(cs, torch.tensor([0.4 - 0.15, 0.1], dtype=torch.float64))
    with pytest.raises(ValueError):
        prob_diff_per_example(p, yy, "exact")


@pytest.mark.parametrize(
    "table, message",
    [
        ('text = "{XX}{YY}, {XX}"\nrelation = "exact"', "needs sequence"),
        ('text = "{prev1}, {XX}{YY}, {XX}"', "sequence"),
        ('text = "{XX}{YY}, {XX}"\nsequence = "fibonacci"', "fibonacci"),
        ('text = "{XX}{YY}, {XX}"\nnouns = []', "lists no nouns"),
        ('text = "{XX}{YY} then {XX}{YY}, {XX}"', "once"),
    ],
)
def test_family_data_errors(tmp_path, table, message):
    import shutil

    from clt_bench.paths import tasks_dir

    shutil.copytree(tasks_dir() / "greater_than", tmp_path / "t")
    toml = tmp_path / "t" / "task.toml"
    toml.write_text(toml.read_text() + f"\n[families.bad]\n{table}\n")
    with pytest.raises(UserError, match=message):
        load_task(tmp_path / "t")


# ---- end to end on the toy ---------------------------------------------------------------------

# families whose relation the toy's corpus teaches: PD > 0 and above the corrupted PD
TOY_SOLVES = ["lasted", "started_ended", "sequence", "smaller_than", "ended_started", "price"]
# "less than" variants the toy never saw: it still predicts later years, so PD (lt) < 0
TOY_GOES_UP = ["descending", "bc"]


@pytest.fixture(scope="module")
def toy_rows():
    from clt_bench.config import load_config
    from clt_bench.models import load_model
    from clt_bench.task.families import evaluate_families

    rows, heat, _ = evaluate_families(load_config("toy"), load_model("toy"), load_task(), 12)
    return {r["name"]: r for r in rows}, heat


def test_every_family_end_to_end_on_toy(toy_rows, task_spec):
    rows, heat = toy_rows
    assert set(rows) == set(task_spec.templates) | set(task_spec.families)
    for name, r in rows.items():
        assert r["error"] == "" and r["n"] == 12, name
        for key in ("prob_diff", "cutoff_sharpness", "corrupted_prob_diff"):
            assert math.isfinite(r[key]) and -1.0 <= r[key] <= 1.0, (name, key)
        assert heat[name].shape == (97, 100)
    for name in TOY_SOLVES:
        assert rows[name]["prob_diff"] > 0.2, name
        assert rows[name]["prob_diff"] > rows[name]["corrupted_prob_diff"], name
    for name in TOY_GOES_UP:
        assert rows[name]["prob_diff"] < -0.1, name
    assert abs(rows["arithmetic_exact"]["prob_diff"]) < 0.5


def test_families_heatmap_rows_scaled():
    from clt_bench.plots import scale_matrix

    m = np.array([[0.0, 0.5, 0.25], [0.001, 0.002, 0.0], [np.nan, np.nan, np.nan]])
    row, _ = scale_matrix(m, "row")
    assert np.allclose(row[:2].max(1), 1.0) and np.isnan(row[2]).all()
    assert np.allclose(row[1], [0.5, 1.0, 0.0])
    log, _ = scale_matrix(m[:2], "log")
    assert np.isclose(log.max(), math.log10(0.5)) and np.isclose(log.min(), math.log10(0.5e-4))
