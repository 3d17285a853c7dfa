"""Ablation/attribution consistency and the replacement PD on a tiny random bridge (the
units-needed curves are tested in test_compare_units.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import GT_TEMPLATE, task_head, tiny_bridge

from clt_bench.compare.curve import replacement_pd
from clt_bench.features.ablation import (
    constrained_delta_pd_frozen,
    free_delta_pd,
    pd_of,
)
from clt_bench.features.task_attributions import (
    feature_effects,
    influence_ranking,
    one_per_yy,
    task_attributions,
)
from clt_bench.graphs.edge_weights import Attributor
from clt_bench.graphs.local_replacement import build_replacement, run_frozen
from clt_bench.graphs.random_clt import random_clt
from clt_bench.task.dataset import build_dataset


@pytest.fixture(scope="module")
def setup(tokenizer, task_spec):
    bridge = tiny_bridge(n_layer=2, n_embd=32, seed=0)
    for p in bridge.parameters():
        p.requires_grad_(False)
    batch = one_per_yy(build_dataset(task_spec, tokenizer, "discovery"), 8)
    rm0 = build_replacement(bridge, random_clt(2, 32, 64), batch.clean)
    clt = random_clt(
        2,
        32,
        64,
        activation="relu",
        seed=3,
        calibrate_on=rm0.resid_mid.reshape(-1, 2, 32),
        rate=0.1,
        decoder_scale=1.0,
    )
    return bridge, clt, batch


def test_feature_effects_match_row_attributions(setup):
    bridge, clt, batch = setup
    rm = build_replacement(bridge, clt, batch.clean[:3])
    ref = (
        Attributor(rm, lambda run: run.logits[:, 100:102].sum(-1), modes="linear")
        .rows(torch.ones(1, 3))
        .features[0]
    )
    run = run_frozen(rm, modes="linear", leaves=True)
    target = run.logits[:, 100:102].sum(-1)  # [n]
    g = torch.autograd.grad(target.sum(), run.mlp_leaves)
    ours = feature_effects(rm, [x[None] for x in g])[0]
    assert torch.allclose(ours.sum(-1), ref.double(), atol=1e-5)
    assert torch.allclose(
        feature_effects(rm, [x[None] for x in g], split=False)[0], ref.double(), atol=1e-5
    )


def test_task_attributions_and_ablations(setup):
    bridge, clt, batch = setup
    att = task_attributions(bridge, clt, batch, prompts_per_pass=3, progress=False)
    assert att.answer.shape[1] == 100
    assert np.allclose(att.write_effects.sum(1), att.logit_diff, atol=1e-5)
    assert np.allclose(att.pos_logit_diff.sum(1), att.logit_diff, atol=1e-8)
    keys, scores = influence_ranking(att)
    assert np.all(np.diff(scores) <= 0)
    feats = [att.split_key(k) for k in keys[:3]]
    active = [np.unique(att.pair_prompt[att.pair_key == k]) for k in keys[:3]]
    rm = build_replacement(bridge, clt, batch.clean)
    acts = [rm.acts[:, :, lay, f].numpy() for lay, f in feats]
    d_f = free_delta_pd(bridge, clt, batch, feats, acts, active, progress=False)
    # hand-computed: remove the feature's decoder writes from every MLP output it feeds, at every
    # position of every prompt (prompts where it is silent change nothing), real model live
    clean_pd = pd_of(bridge(batch.clean)[:, -1], batch)
    for u, (lay, f) in enumerate(feats):
        a = torch.as_tensor(acts[u])  # [n, pos]
        writes = {
            t: a[..., None] * clt.layer_decoder(lay, t)[f].detach() for t in clt.target_layers(lay)
        }
        hooks = [
            (f"blocks.{t}.hook_mlp_out", lambda y, hook, w=w: y - w) for t, w in writes.items()
        ]
        ref = pd_of(bridge.run_with_hooks(batch.clean, fwd_hooks=hooks)[:, -1], batch)
        assert d_f[u] == pytest.approx(float((ref - clean_pd).mean()), abs=1e-6)
    assert np.abs(d_f).max() > 1e-6  # the case is not trivially zero
    # the fully frozen ablation from direct effects == run_frozen with the feature zeroed
    fast = constrained_delta_pd_frozen(
        att, [int(k) for k in keys[:3]], bridge.W_U, bridge.b_U, batch
    )
    rm_all = build_replacement(bridge, clt, batch.clean)
    clean_pd = pd_of(rm_all.logits, batch)
    for u, (lay, f) in enumerate(feats):
        acts = rm_all.acts.clone()
        acts[:, :, lay, f] = 0.0
        logits = run_frozen(rm_all, modes="frozen", acts=acts).logits
        ref = float((pd_of(logits, batch) - clean_pd).mean())
        assert fast[u] == pytest.approx(ref, abs=1e-6)
    r = replacement_pd(bridge, clt, batch)
    assert set(r) >= {"model_prob_diff", "replacement_prob_diff"}


EXACT = '[templates.t]\ntext = "{XX}{YY}, {XX}"\nrelation = "exact"\nanswer = "YY+1"\n'


@pytest.mark.parametrize(
    "body, count", [(EXACT, 100), (GT_TEMPLATE, 50)], ids=["exact", "answers_50"]
)
def test_attributions_and_ablations_follow_the_answer_space(
    setup, tmp_path, tokenizer, body, count
):
    """Exact answers and a smaller answer space: A answer columns, the task's own PD, and the
    first-order PD attribution (its gradient, exact PD included) matches a small ablation."""
    from clt_bench.features.task_attributions import per_feature_sums
    from clt_bench.task.spec import load_task

    bridge, clt, _ = setup
    (tmp_path / "task.toml").write_text(task_head(count) + body)
    (tmp_path / "nouns.txt").write_text("war\npeace\n")
    spec = load_task(tmp_path)
    batch = one_per_yy(build_dataset(spec, tokenizer, "discovery"), 6)
    assert batch.n_answers == count
    att = task_attributions(bridge, clt, batch, prompts_per_pass=3, progress=False)
    assert att.answer.shape[1] == count and att.relation == batch.relation
    clean = pd_of(build_replacement(bridge, clt, batch.clean).logits, batch)
    assert att.clean_prob_diff == pytest.approx(float(clean.mean()), abs=1e-9)
    keys, _ = influence_ranking(att)
    keys = keys[:4]
    eps = 1e-3
    fast = constrained_delta_pd_frozen(
        att, [int(k) for k in keys], bridge.W_U, bridge.b_U, batch, scale=1.0 - eps
    )
    first_order = per_feature_sums(att, keys)["pd_direct"]
    scale = np.abs(first_order).max()
    assert scale > 0  # not trivially zero (the tiny model puts little mass on the answers)
    assert np.allclose(fast / -eps, first_order, rtol=1e-2, atol=1e-3 * scale)
