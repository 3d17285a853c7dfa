"""The greater-than dataset: Hanna's construction, exactly, for the real GPT-2 tokenizer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from clt_bench.task.dataset import (
    answer_token_ids,
    arithmetic_step,
    build_batch,
    build_dataset,
    valid_years,
)


def test_year_filter_counts_match_spec(tokenizer):
    assert len(valid_years(tokenizer, 1000, 1900)) == 768
    assert len(valid_years(tokenizer, 1100, 1800)) == 617


def test_year_filter_covers_every_yy_and_drops_century_ends(tokenizer):
    years = valid_years(tokenizer)
    assert {y % 100 for y in years} == set(range(2, 99))
    kept_all = valid_years(tokenizer, drop_century_ends=False)
    for century in {y // 100 for y in kept_all}:
        ys = [y for y in kept_all if y // 100 == century]
        assert ys[0] not in years and ys[-1] not in years


def test_1001_quirk(tokenizer):
    # " 1001" splits as [" 100", "1"]: not a valid year, and a token-level 01 swap in century 10
    # does not retokenise canonically -- the batch records which examples that affects.
    assert [tokenizer.decode([t]) for t in tokenizer.encode(" 1001")] == [" 100", "1"]
    assert 1001 not in valid_years(tokenizer)


def test_answer_ids(tokenizer):
    ids = answer_token_ids(tokenizer)
    assert ids.shape == (100,)
    assert ids[0] == 405 and ids[1] == 486 and ids[11] == 1157 and ids[17] == 1558
    assert ids[99] == 2079


def test_discovery_set_is_balanced_and_seeded(task_spec, tokenizer):
    a = build_dataset(task_spec, tokenizer, "discovery")
    b = build_dataset(task_spec, tokenizer, "discovery")
    assert len(a) == 490
    assert a.prompts == b.prompts
    counts = a.yy.bincount(minlength=100)
    assert all(counts[y] == 6 for y in range(2, 7))
    assert all(counts[y] == 5 for y in range(7, 99))
    assert counts[:2].sum() == 0 and counts[99] == 0
    c = build_dataset(task_spec, tokenizer, "discovery", seed=7)
    assert c.prompts != a.prompts


def test_hanna_positions(task_spec, tokenizer):
    batch = build_dataset(task_spec, tokenizer, "discovery", n=5)
    assert batch.clean.shape[1] == 13
    assert batch.yy_pos == 8 and batch.end_pos == 12
    toks = [tokenizer.decode([t]) for t in batch.clean[0]]
    assert toks[0] == "<|endoftext|>" and toks[1] == " The" and toks[9] == " to"
    assert toks[7] == toks[12]  # " XX" repeated at END


def test_headline_set_uniform(task_spec, tokenizer):
    batch = build_dataset(task_spec, tokenizer, "headline")
    assert len(batch) == 10_000
    assert len(set(batch.years)) > 700


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_clean_corrupted_pairs(task_spec, tokenizer, data):
    years = valid_years(tokenizer)
    template = data.draw(st.sampled_from(["hanna", "eap_ig", "acdc", "goodfire"]))
    tpl = task_spec.template(template)
    if tpl.year_range:
        years = [y for y in years if tpl.year_range[0] <= y < tpl.year_range[1]]
    chosen = data.draw(st.lists(st.sampled_from(years), min_size=1, max_size=6))
    nouns = data.draw(
        st.lists(st.sampled_from(task_spec.nouns), min_size=len(chosen), max_size=len(chosen))
    )
    batch = build_batch(task_spec, tokenizer, tpl, chosen, nouns)
    assert batch.clean.shape == batch.corrupted.shape
    diff = (batch.clean != batch.corrupted).nonzero()
    assert set(diff[:, 1].tolist()) <= {batch.yy_pos}
    for i, y in enumerate(chosen):
        assert tokenizer.decode([int(batch.clean[i, batch.yy_pos])]) == f"{y % 100:02d}"
        assert tokenizer.decode([int(batch.corrupted[i, batch.yy_pos])]) == "01"
        assert tokenizer.decode(batch.clean[i].tolist()) == batch.prompts[i]
        assert batch.yy[i] == y % 100
    assert batch.end_pos == batch.clean.shape[1] - 1
    assert batch.relation == tpl.relation
    xx = tokenizer.decode([int(batch.clean[0, batch.end_pos])])
    assert xx.strip() == str(chosen[0] // 100)


def test_generalisation_families_build(task_spec, tokenizer):
    for name in task_spec.families:
        batch = build_dataset(task_spec, tokenizer, "discovery", template=name, n=20)
        assert len(batch) == 20
        tpl = task_spec.template(name)
        if tpl.year_range:
            assert all(tpl.year_range[0] <= y < tpl.year_range[1] for y in batch.years)


def test_row_answers_of_an_exact_family(task_spec, tokenizer):
    """Each heatmap row's answer (what the YY x ZZ heatmaps mark): YY + step where a prompt has
    that YY, -1 elsewhere; None for a gt template (the heatmaps mark ZZ = YY there)."""
    batch = build_dataset(task_spec, tokenizer, "discovery", template="arithmetic_exact", n=40)
    rows = list(range(2, 99))
    answers = batch.row_answers(rows)
    assert answers is not None
    seen = set(batch.yy.tolist())
    for y, a in zip(rows, answers, strict=True):
        assert a == (y + arithmetic_step(y) if y in seen else -1), y
    assert build_dataset(task_spec, tokenizer, "discovery", n=8).row_answers(rows) is None
