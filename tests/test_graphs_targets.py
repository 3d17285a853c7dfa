"""The greater-than target: shift invariance (graph edges, target value, feature ranking), the
task's tokenisation of text prompts, and circuit-tracer's BOS convention."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from _graphs_helpers import make_clt, tiny_loaded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clt_bench.config import GraphsConfig
from clt_bench.features.task_attributions import influence_ranking, task_attributions
from clt_bench.graphs import build_graph
from clt_bench.graphs.build import prompt_tokens
from clt_bench.graphs.export import write_graph_json
from clt_bench.graphs.targets import greater_than_coefficients, make_targets
from clt_bench.models.sources import LoadedModel
from clt_bench.task.dataset import answer_token_ids, build_batch
from clt_bench.task.metrics import correct_mask

PROMPT = "The war lasted from the year 1711 to the year 17"


@functools.lru_cache(maxsize=1)
def untied_loaded() -> LoadedModel:
    """A tiny GPT-2 whose unembedding is not tied to the embedding (so it can be shifted)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from clt_bench.models.sources import wrap_hf_gpt2
    from clt_bench.models.tokenizer import gpt2_tokenizer

    torch.manual_seed(3)
    cfg = GPT2Config(
        n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=50257, tie_word_embeddings=False
    )
    model = GPT2LMHeadModel(cfg).double()
    bridge = wrap_hf_gpt2(model, gpt2_tokenizer(), "tiny-untied")
    for p in bridge.parameters():
        p.requires_grad_(False)
    return LoadedModel(name="tiny", bridge=bridge, tokenizer=gpt2_tokenizer())


def _lm_head(loaded: LoadedModel) -> torch.Tensor:
    heads = [m for n, m in loaded.bridge.named_modules() if n.endswith("lm_head")]
    weight = getattr(heads[0], "weight", None) if heads else None
    if weight is None:
        weight = next(p for n, p in loaded.bridge.named_parameters() if "lm_head" in n)
    return weight  # [V, d]


def test_coefficients_sum_to_zero_and_are_a_mean_difference():
    for yy in (2, 11, 50, 98):
        c = greater_than_coefficients(yy)
        assert abs(float(c.sum())) < 1e-12
        good = correct_mask(torch.tensor([yy]))[0]
        assert torch.allclose(c[good], torch.full_like(c[good], 1.0 / int(good.sum())))
        assert torch.allclose(c[~good], torch.full_like(c[~good], -1.0 / int((~good).sum())))
    batch = greater_than_coefficients(torch.tensor([11, 60]))
    assert torch.equal(batch[1], greater_than_coefficients(60))


@pytest.fixture(scope="module")
def shift_setup(tokenizer, task_spec):
    loaded = untied_loaded()
    tokens, _ = prompt_tokens(loaded.tokenizer, PROMPT)
    clt = make_clt(loaded, tokens, "jumprelu", n_features=12, seed=1)
    batch = build_batch(
        task_spec, tokenizer, task_spec.template("hanna"), [1711, 1742, 1788], ["war", "war", "war"]
    )
    return loaded, clt, tokens, batch


def _measure(loaded, clt, tokens, batch):
    g = build_graph(loaded, clt, tokens, "greater-than", GraphsConfig(batch_size=32))
    att = task_attributions(loaded.bridge, clt, batch, prompts_per_pass=3, progress=False)
    keys, score = influence_ranking(att)
    row = g.adjacency[g.offsets()["target"]]
    return g.target_values.clone(), row.clone(), keys, score, g


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    scale=st.floats(-3.0, 3.0).filter(lambda s: abs(s) > 0.1),
    answers_only=st.booleans(),
    seed=st.integers(0, 100),
)
def test_target_edges_and_ranking_ignore_logit_shifts(shift_setup, scale, answers_only, seed):
    """Adding one vector u to every unembedding column (or to the 100 answers' only) adds the
    same amount x . u to those logits; the target, its edges and the feature ranking stay."""
    loaded, clt, tokens, batch = shift_setup
    value0, row0, keys0, score0, g0 = _measure(loaded, clt, tokens, batch)
    W = _lm_head(loaded)
    u = torch.randn(W.shape[1], generator=torch.Generator().manual_seed(seed), dtype=W.dtype)
    u = scale * u / u.norm()
    ids = answer_token_ids(loaded.tokenizer)
    rows = ids if answers_only else slice(None)
    clean = loaded.bridge(tokens[None])[0, -1].detach().clone()
    saved = W.data.clone()
    try:
        W.data[rows] += u
        shifted = loaded.bridge(tokens[None])[0, -1].detach()
        moved = shifted[ids] - clean[ids]
        # the shift is real: the answer logits moved, all by one amount
        assert float(moved.abs().min()) > 1e-6
        assert float(moved.max() - moved.min()) < 1e-8
        # the old +-1 target (coefficients summing to 98 - 2 YY) would have moved
        pm = correct_mask(torch.tensor([11]))[0].double() * 2 - 1
        assert abs(float(pm @ moved)) > 1e-4
        value1, row1, keys1, score1, _ = _measure(loaded, clt, tokens, batch)
    finally:
        W.data.copy_(saved)
    torch.testing.assert_close(value1, value0, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(row1, row0, atol=1e-9, rtol=1e-7)
    assert np.array_equal(keys1, keys0)
    np.testing.assert_allclose(score1, score0, rtol=1e-7, atol=1e-10)
    assert g0.meta["demean"] is True


def test_demean_is_the_default_for_every_target(shift_setup):
    loaded, _, tokens, _ = shift_setup
    assert GraphsConfig().demean
    logits = loaded.bridge(tokens[None])[0, -1].detach()
    for spec in ("greater-than", "logits", [" the", " a"]):
        for t in make_targets(spec, loaded.tokenizer, PROMPT, logits):
            assert abs(float(t.direction.sum())) < 1e-9


def test_text_prompt_tokenised_as_the_task(tokenizer, task_spec, tmp_path):
    """The headline sentence: graph token ids == the task dataset's ids for YY = 11."""
    task = build_batch(task_spec, tokenizer, task_spec.template("hanna"), [1711], ["war"])
    assert task.prompts[0].endswith(PROMPT)
    tokens, _ = prompt_tokens(tokenizer, PROMPT)
    assert tokens.tolist() == task.clean[0].tolist()
    assert tokens[:2].tolist() == [tokenizer.bos_token_id, 383]  # [BOS, " The"]
    loaded = tiny_loaded(2, 16, 0, torch.float64)
    clt = make_clt(loaded, tokens, "relu", n_features=8)
    g = build_graph(loaded, clt, PROMPT, "greater-than", GraphsConfig(batch_size=32))
    assert g.tokens.tolist() == task.clean[0].tolist()
    data = json.loads(write_graph_json(g, tmp_path / "g.json").read_text())
    assert data["metadata"]["prompt_token_ids"] == task.clean[0].tolist()


def test_bos_features_and_errors_are_constants():
    loaded = tiny_loaded(2, 16, 0, torch.float64)
    tokens, _ = prompt_tokens(loaded.tokenizer, PROMPT)
    clt = make_clt(loaded, tokens, "jumprelu", n_features=16, seed=2)
    keep = build_graph(loaded, clt, tokens, "logits", GraphsConfig(zero_bos=False))
    zero = build_graph(loaded, clt, tokens, "logits", GraphsConfig())
    assert GraphsConfig().zero_bos
    assert (keep.features[:, 1] == 0).any()  # the case: BOS has active features
    assert not (zero.features[:, 1] == 0).any()
    assert zero.n_features == int((keep.features[:, 1] != 0).sum())
    o, P = zero.offsets(), zero.n_pos
    err_bos = o["error"] + torch.arange(zero.n_layers) * P
    assert zero.adjacency[:, err_bos].abs().max() == 0
    assert (
        keep.adjacency[:, keep.offsets()["error"] + torch.arange(keep.n_layers) * P].abs().max() > 0
    )
    assert zero.meta["zero_bos"] and not keep.meta["zero_bos"]
    for j in range(len(zero.targets)):  # still exact: BOS moves into the constant term
        sp = zero.target_split(j)
        assert abs(sp["residual"]) < 1e-8 and abs(sp["constant.bos"]) > 0
    # a prompt that does not start with BOS is unaffected
    no_bos = tokens[1:]
    a = build_graph(loaded, clt, no_bos, "logits", GraphsConfig())
    b = build_graph(loaded, clt, no_bos, "logits", GraphsConfig(zero_bos=False))
    assert torch.equal(a.adjacency, b.adjacency) and not a.meta["zero_bos"]
