"""Where each unit kind acts (compare.effect_shares): exact bookkeeping on tiny models, the
planted model's construction seen through its neurons, and the shared bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_compare_units import LAYER, NEURON, batch, planted  # noqa: F401 (fixtures)

from clt_bench.baseline.ground_truth import known_circuit, mlp_sites
from clt_bench.compare.effect_shares import effect_shares, per_prompt_shares, site_effects
from clt_bench.compare.units import (
    feature_units,
    linear_effects,
    linear_effects_per_position,
    neuron_units,
)
from clt_bench.stats import bootstrap_ci, mean_ci


def test_per_position_effects_add_up_to_the_ranking_estimate(planted, batch):  # noqa: F811
    bridge, clt, _ = planted
    for units in (
        neuron_units(bridge, batch.clean, batch.corrupted),
        feature_units(bridge, clt, batch.clean, batch.corrupted),
    ):
        per = linear_effects_per_position(bridge, units, batch)
        assert [tuple(e.shape) for e in per] == [
            (len(batch), batch.clean.shape[1], b.n_units) for b in units.blocks
        ]
        summed = torch.cat([e.sum(1).mean(0) for e in per]).double()
        assert torch.equal(summed, linear_effects(bridge, units, batch))


def test_site_effects_sit_where_the_planted_neuron_writes(planted, batch):  # noqa: F811
    """Every MLP writes through one neuron only (W_out is zero elsewhere): all of the neurons'
    effect lies at layer LAYER, and it equals |delta * W_out . dPD/d out| summed by hand."""
    bridge, _, _ = planted
    units = neuron_units(bridge, batch.clean, batch.corrupted)
    eff = site_effects(bridge, units, batch)  # [n, L, pos]
    assert eff.shape == (len(batch), 2, batch.clean.shape[1])
    assert float(eff[:, 1 - LAYER].abs().sum()) == 0.0
    assert float(eff[:, LAYER].sum()) > 0
    e = linear_effects_per_position(bridge, units, batch)[LAYER][:, :, NEURON]
    torch.testing.assert_close(eff[:, LAYER], e.abs().double())


def test_shares_partition_each_prompt_and_name_the_planted_sites():
    truth = known_circuit("planted")
    n, L, pos, yy = 3, 6, 9, 4
    end = pos - 1
    eff = torch.zeros(n, L, pos, dtype=torch.float64)
    eff[:, 1, yy] = 2.0  # MLP1 at YY: a planted site
    eff[:, 0, yy] = 1.0  # MLP0 at YY: not one
    eff[:, 4, end] = 3.0  # MLP4 at END: planted
    eff[:, 2, 1] = 4.0  # elsewhere
    eff[2] = 0.0  # a prompt where nothing acts
    assert {(1, yy), (4, end)} <= mlp_sites(truth, yy, end)
    s = per_prompt_shares(eff, yy, truth)
    np.testing.assert_allclose(s["YY"][:2], 0.3)
    np.testing.assert_allclose(s["END"][:2], 0.3)
    np.testing.assert_allclose(s["rest"][:2], 0.4)
    np.testing.assert_allclose(s["planted_sites"][:2], 0.5)
    assert all(math.isnan(s[k][2]) for k in s)
    assert all(math.isnan(v) for v in per_prompt_shares(eff, yy, None)["planted_sites"])


def test_effect_shares_report_finite_per_prompt_values_that_average_to_the_share(
    planted,  # noqa: F811
    batch,  # noqa: F811
):
    bridge, clt, _ = planted
    units = {
        "neuron": neuron_units(bridge, batch.clean, batch.corrupted),
        "clt": feature_units(bridge, clt, batch.clean, batch.corrupted, "clt_features"),
    }
    out = effect_shares(bridge, units, batch, known_circuit("planted"), n_boot=200)
    for name in units:
        row = out[name]
        assert row["YY"] + row["END"] + row["rest"] == pytest.approx(1.0)
        lo, hi = row["END_ci"]
        assert lo <= row["END"] <= hi
        per = out["per_prompt"][name]["END"]
        assert np.isfinite(per).all() and float(per.mean()) == pytest.approx(row["END"])
        assert np.asarray(row["grid"]).shape == (2, batch.clean.shape[1])


def test_mean_ci_drops_non_finite_values_and_matches_the_bootstrap():
    x = np.array([0.1, 0.4, np.nan, 0.3, 0.2, np.inf])
    mean, lo, hi = mean_ci(x, n_boot=500, seed=3)
    finite = np.array([0.1, 0.4, 0.3, 0.2])
    assert mean == pytest.approx(finite.mean())
    assert (lo, hi) == bootstrap_ci(finite, n_boot=500, seed=3)
    assert math.isnan(mean_ci(np.array([0.5]))[1]) and math.isnan(mean_ci(np.array([]))[0])


@pytest.mark.slow
def test_planted_neurons_act_at_the_planted_sites(tokenizer, task_spec):
    """By construction (SIIT strictness) only the planted MLPs move PD: most of the neurons'
    effect must lie at the planted MLP sites (measured 0.85 on the shipped weights), and almost
    none away from YY and END."""
    from clt_bench.models import load_model
    from clt_bench.task.dataset import build_dataset, one_per_yy

    loaded = load_model("planted")
    b = one_per_yy(build_dataset(task_spec, loaded.tokenizer, "discovery"), 48)
    units = {"neuron": neuron_units(loaded.bridge, b.clean, b.corrupted)}
    out = effect_shares(loaded.bridge, units, b, known_circuit("planted"), n_boot=100)
    assert out["neuron"]["planted_sites"] >= 0.75
    assert out["neuron"]["rest"] <= 0.05
