"""Pair-ablation interactions of features, on a tiny random model and a random CLT."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _graphs_helpers import tiny_loaded

from clt_bench.features.ablation import clean_writes, decoder_rows, free_delta_pd
from clt_bench.features.interactions import pair_interactions, write_interactions
from clt_bench.features.task_attributions import one_per_yy
from clt_bench.graphs.local_replacement import build_replacement
from clt_bench.graphs.random_clt import random_clt
from clt_bench.task.dataset import build_dataset


@pytest.fixture(scope="module")
def setup(tokenizer, task_spec):
    bridge = tiny_loaded(n_layer=2, n_embd=32, seed=0, dtype=torch.float64).bridge
    batch = one_per_yy(build_dataset(task_spec, tokenizer, "discovery"), 6)
    rm0 = build_replacement(bridge, random_clt(2, 32, 64, dtype=torch.float64), batch.clean)
    clt = random_clt(
        2,
        32,
        64,
        activation="relu",
        seed=3,
        rate=0.3,
        decoder_scale=3.0,
        dtype=torch.float64,
        calibrate_on=rm0.resid_mid.reshape(-1, 2, 32),
    )
    rm = build_replacement(bridge, clt, batch.clean)
    return bridge, clt, batch, rm


def test_singles_match_free_ablation_and_residual_is_symmetric(setup, tmp_path):
    bridge, clt, batch, rm = setup
    feats = [(0, f) for f in range(3)] + [(1, f) for f in range(2)]
    acts = [rm.acts[:, :, lay, f].numpy() for lay, f in feats]
    out = pair_interactions(bridge, clt, batch, feats, acts, rows_per_pass=7)
    active = [np.nonzero(a.any(axis=1))[0] for a in acts]
    ref = free_delta_pd(bridge, clt, batch, feats, acts, active, progress=False)
    # the random model puts ~1e-6 of PD on these features: compare relative to that scale
    scale = np.abs(ref).max()
    assert scale > 1e-8
    np.testing.assert_allclose(out["single"], ref, rtol=1e-6, atol=1e-9 * scale)
    res = out["residual"]
    np.testing.assert_allclose(res, res.T, atol=1e-12 * scale)
    assert np.all(np.diag(res) == 0)
    # a real model is not additive: some pair of these strong features interacts
    assert out["interaction_share"] > 1e-3
    csv, png = write_interactions(out, [f"L{a}/{b}" for a, b in feats], tmp_path)
    table = pd.read_csv(csv)
    assert len(table) == 10 and table["residual"].to_numpy() == pytest.approx(
        res[np.triu_indices(5, 1)]
    )
    assert png.stat().st_size > 5000


def test_features_on_disjoint_prompts_do_not_interact(setup):
    bridge, clt, batch, rm = setup
    feats = [(0, 0), (0, 1)]
    a0, a1 = (rm.acts[:, :, 0, f].clone().numpy() for f in (0, 1))
    a0[3:] = 0.0  # feature 0 only in prompts 0-2, feature 1 only in prompts 3-5
    a1[:3] = 0.0
    out = pair_interactions(bridge, clt, batch, feats, [a0, a1])
    scale = np.abs(out["single"]).max()
    assert scale > 1e-8
    assert abs(out["residual"][0, 1]) < 1e-9 * scale
    assert out["pair"][0, 1] == pytest.approx(out["single"].sum(), rel=1e-9)


def test_clean_writes_equal_the_per_row_sums_bitwise(setup):
    """The batched decoder writes are the per-row loop's sums exactly (same products, same
    order), for singles, pairs and features whose target layers differ."""
    _, clt, batch, rm = setup
    feats = [(0, 1), (1, 0), (0, 5)]
    acts = [rm.acts[:, :, lay, f].numpy() for lay, f in feats]
    dec = decoder_rows(clt, feats, torch.float32)
    a_all = torch.stack([torch.as_tensor(a, dtype=torch.float32) for a in acts])
    rows = [((0,), 2), ((1,), 0), ((0, 1), 3), ((1, 2), 5), ((2,), 1)]
    prompt = torch.tensor([p for _, p in rows])
    first = torch.tensor([s[0] for s, _ in rows])
    second = torch.tensor([s[1] if len(s) > 1 else -1 for s, _ in rows])
    got = clean_writes(a_all, dec, prompt, first, second)
    n_pos = batch.clean.shape[1]
    for r, (s, p) in enumerate(rows):
        ref = torch.zeros(clt.n_layers, n_pos, clt.spec.d_model)
        for u in s:
            layer, fid = feats[u]
            a = torch.as_tensor(acts[u][p], dtype=torch.float32)
            for tgt in clt.target_layers(layer):
                ref[tgt] += a[:, None] * clt.layer_decoder(layer, tgt)[fid].to(torch.float32)
        assert torch.equal(got[:, r], ref), (s, p)
    assert got[:, 2].abs().sum() > 0
