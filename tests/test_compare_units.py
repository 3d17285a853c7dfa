"""Units needed, one definition for every unit kind: planted units, endpoints, the halves rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_bridge

from clt_bench.compare.units import (
    FRACTIONS,
    UnitBlock,
    UnitSet,
    bootstrap_needed,
    feature_units,
    neuron_units,
    normalized,
    split_halves,
    units_needed,
    units_needed_curve,
)
from clt_bench.features.ablation import pd_of
from clt_bench.features.task_attributions import one_per_yy
from clt_bench.graphs.random_clt import random_clt
from clt_bench.task.dataset import build_dataset

LAYER, NEURON = 1, 7


def _bridge(batch, seed: int = 0):
    """A tiny random bridge whose unembedding bias gives most of the mass to the 100 answers (a
    random model spreads it over 50,257 tokens and every PD would be ~1e-4)."""
    bridge = tiny_bridge(n_layer=2, n_embd=32, seed=seed)
    for p in bridge.parameters():
        p.requires_grad_(False)
    bridge.unembed.original_component.bias[batch.answer_ids] += 20.0
    return bridge


@pytest.fixture(scope="module")
def batch(tokenizer, task_spec):
    return one_per_yy(build_dataset(task_spec, tokenizer, "discovery"), 12)


def _resid_mid(bridge, tokens):
    """[n * pos, L, d] residual stream before each MLP: calibrates a random CLT's thresholds."""
    _, cache = bridge.run_with_cache(tokens)
    L = bridge.cfg.n_layers
    return torch.stack([cache[f"blocks.{i}.hook_resid_mid"] for i in range(L)], 2).reshape(
        -1, L, bridge.cfg.d_model
    )


def _pd(bridge, tokens, batch, hooks=()):
    logits = bridge.run_with_hooks(tokens, fwd_hooks=list(hooks))[:, -1]
    return float(pd_of(logits, batch).mean())


def _plant_directions(bridge, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(read, write) [d] directions for a planted unit at layer LAYER, position END: ``read``
    separates clean from corrupted residuals there, ``write`` favours large ZZ in the logits."""
    _, c = bridge.run_with_cache(batch.clean)
    _, x = bridge.run_with_cache(batch.corrupted)
    name = f"blocks.{LAYER}.hook_resid_mid"
    read = (c[name][:, -1] - x[name][:, -1]).mean(0)
    zz = torch.linspace(-1.0, 1.0, 100)
    write = bridge.W_U[:, batch.answer_ids] @ zz
    return read / read.norm(), write / write.norm()


@pytest.fixture(scope="module")
def planted(batch):
    """A tiny model whose MLPs write only through one neuron, and a CLT with one live feature.

    The planted neuron / feature reads a direction that separates the clean from the corrupted
    residual at END and writes one that raises large-ZZ logits, so the clean run has the larger
    PD; every other unit writes exactly zero."""
    bridge = _bridge(batch)
    read, write = _plant_directions(bridge, batch)
    with torch.no_grad():
        for block in bridge.original_model.transformer.h:
            block.mlp.c_proj.weight.zero_()  # [d_mlp, d] (HF Conv1D): W_out of layer i
        mlp = bridge.original_model.transformer.h[LAYER].mlp
        ln = bridge.original_model.transformer.h[LAYER].ln_2
        mlp.c_fc.weight[:, NEURON] = 20.0 * read / ln.weight  # reads through ln_2's gain
        mlp.c_fc.bias[NEURON] = 0.0
        mlp.c_proj.weight[NEURON] = 3.0 * write
        # a larger final gain lets the planted write decide among the answers
        bridge.original_model.transformer.ln_f.weight.mul_(10.0)
        # the bias puts the neuron's threshold between its clean and corrupted inputs at END
        name = f"blocks.{LAYER}.mlp.hook_pre"
        pre_c = bridge.run_with_cache(batch.clean)[1][name][:, -1, NEURON].mean()
        pre_x = bridge.run_with_cache(batch.corrupted)[1][name][:, -1, NEURON].mean()
        mlp.c_fc.bias[NEURON] = -(pre_c + pre_x) / 2
    assert pre_c > pre_x and torch.count_nonzero(bridge.W_out) == bridge.cfg.d_model
    clt = random_clt(
        2,
        32,
        16,
        activation="relu",
        seed=5,
        rate=0.3,
        decoder_scale=1.0,
        calibrate_on=_resid_mid(bridge, batch.clean),
    )
    fid = 5
    with torch.no_grad():
        for w in clt.W_dec:
            w.zero_()
        clt.W_enc[LAYER, fid] = 500.0 * read  # the CLT reads the raw (small) residual
        mid = {
            k: bridge.run_with_cache(t)[1][f"blocks.{LAYER}.hook_resid_mid"][:, -1] @ read
            for k, t in (("c", batch.clean), ("x", batch.corrupted))
        }
        clt.b_enc[LAYER, fid] = -250.0 * (mid["c"].mean() + mid["x"].mean())
        clt.W_dec[LAYER][fid, 0] = 3.0 * write
    return bridge, clt, fid


def test_planted_units_need_exactly_one(planted, batch):
    bridge, clt, fid = planted
    for make, name in (
        (lambda c, x: neuron_units(bridge, c, x), (LAYER, NEURON)),
        (lambda c, x: feature_units(bridge, clt, c, x), (LAYER, fid)),
    ):
        res = units_needed_curve(bridge, make, batch, dense=4, candidates=4)
        assert float(res.clean.mean()) - res.prob_diff[0] > 0.05, "setup: a clear PD gap"
        assert res.names[0] == name
        assert res.ks[0] == 0 and res.ks[-1] == res.n_units
        assert res.normalized[0] == pytest.approx(0.0, abs=1e-6)
        assert res.normalized[-1] == pytest.approx(1.0, abs=1e-6)
        for f in (0.5, 0.8, 0.9):
            assert res.needed(f) == 1, (res.kind, f)


def test_endpoints_are_the_reference_runs(batch):
    """k = all is the clean run; for neurons k = 0 is the run with every MLP output corrupted."""
    bridge = _bridge(batch, seed=2)
    clt = random_clt(
        2,
        32,
        24,
        activation="relu",
        seed=3,
        rate=0.2,
        decoder_scale=1.0,
        skip=True,
        calibrate_on=_resid_mid(bridge, batch.clean),
    )
    _, ev = split_halves(len(batch))
    eb = batch.subset(ev)
    clean = _pd(bridge, eb.clean, eb)
    _, cache = bridge.run_with_cache(eb.corrupted)
    hooks = [
        (f"blocks.{i}.hook_mlp_out", lambda y, hook, i=i: cache[f"blocks.{i}.hook_mlp_out"])
        for i in range(2)
    ]
    mlps_corrupted = _pd(bridge, eb.clean, eb, hooks)
    res_n = units_needed_curve(
        bridge, lambda c, x: neuron_units(bridge, c, x), batch, dense=3, candidates=3
    )
    res_f = units_needed_curve(
        bridge, lambda c, x: feature_units(bridge, clt, c, x), batch, dense=3, candidates=3
    )
    assert res_n.prob_diff[0] == pytest.approx(mlps_corrupted, abs=1e-6)
    for res in (res_n, res_f):
        assert float(res.clean.mean()) == pytest.approx(clean, abs=1e-6)
        assert res.prob_diff[-1] == pytest.approx(clean, abs=1e-6)
        assert res.normalized[-1] == pytest.approx(1.0, abs=1e-5)
    # the transcoder's k = 0 keeps its error/skip terms clean: it is not the neurons' PD_0
    assert abs(res_f.prob_diff[0] - mlps_corrupted) > 1e-6


def test_halves_and_needed_rule():
    rank, ev = split_halves(7)
    assert rank == [0, 2, 4, 6] and ev == [1, 3, 5] and not set(rank) & set(ev)
    norm = normalized(np.array([0.2, 0.5, 0.9, 1.0]), 1.0)
    assert norm == pytest.approx([0.0, 0.375, 0.875, 1.0])
    assert units_needed([0, 3, 7, 10], norm, 0.5) == 7
    assert units_needed([0, 3, 7, 10], norm, 0.3) == 3
    assert units_needed([0, 3, 7], norm[:3], 0.9) is None


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    ks = [0, 1, 2, 3, 4]
    # prompts recover 0, 40, 70, 90, 100 % (+ noise) of a unit gap
    base = np.array([0.0, 0.4, 0.7, 0.9, 1.0])[:, None]
    pd = (
        base
        + rng.normal(0, 0.05, (5, 40)) * (np.arange(5) > 0)[:, None] * (np.arange(5) < 4)[:, None]
    )
    clean = np.ones(40)
    ci = bootstrap_needed(ks, pd, clean, (0.5, 0.8), n_boot=200, seed=1)
    assert ci[0.5] == (2.0, 2.0) and ci[0.8] == (3.0, 3.0)
    again = bootstrap_needed(ks, pd, clean, (0.5, 0.8), n_boot=200, seed=1)
    assert again == ci
    # a noisier set straddles the threshold: the interval widens
    noisy = (
        base
        + rng.normal(0, 0.4, (5, 6)) * (np.arange(5) > 0)[:, None] * (np.arange(5) < 4)[:, None]
    )
    lo, hi = bootstrap_needed(ks, noisy, np.ones(6), (0.8,), n_boot=300, seed=1)[0.8]
    assert lo < hi


def test_unit_masks_follow_the_model_device():
    """Everything a curve point creates lives on the units' device (meta stands in for cuda)."""
    dev = torch.device("meta")
    units = UnitSet(
        "x",
        [UnitBlock(0, torch.zeros(2, 3, 4, device=dev), torch.zeros(4, 1, 5, device=dev), [0])],
        torch.zeros(2, 3, 1, 5, device=dev),
    )
    out = units.outs([torch.ones(4, device=dev)])
    assert out.device == dev and out.shape == (2, 3, 1, 5)
    with pytest.raises(RuntimeError):
        units.outs([torch.ones(4)])  # a CPU mask is refused: the check can fail


def test_bootstrap_matches_one_resample_at_a_time():
    """The vectorised bootstrap draws the same resamples as a loop of rng.integers(0, n, n) and
    gives the same intervals, including curves that never reach a fraction."""
    rng = np.random.default_rng(7)
    ks = [0, 1, 2, 3, 5, 8, 13, 40]
    pd = np.cumsum(rng.random((len(ks), 9)), 0) / 8 - 0.2
    clean = pd[-1] + rng.normal(0, 0.3, 9)
    got = bootstrap_needed(ks, pd, clean, n_boot=300, seed=3)
    draws = {f: [] for f in FRACTIONS}
    r = np.random.default_rng(3)
    for _ in range(300):
        idx = r.integers(0, 9, 9)
        norm = normalized(pd[:, idx].mean(1), float(clean[idx].mean()))
        for f in FRACTIONS:
            k = units_needed(ks, norm, f)
            draws[f].append(np.inf if k is None else k)
    for f in FRACTIONS:
        with np.errstate(invalid="ignore"):
            want = [float(np.percentile(draws[f], q)) for q in (2.5, 97.5)]
        # numpy interpolates between two infinities as NaN: that bound is "never" (inf)
        want = tuple(np.inf if np.isnan(v) else v for v in want)
        assert str(got[f]) == str(want), f


def test_comparator_scope_starts_every_kind_at_the_comparator_patch(planted, batch):
    """Scoped to MLP1 at END (a stand-in comparator, where the planted unit writes): k = 0 is the
    run with exactly that output corrupted, for neurons and for a transcoder's error_corrupted
    variant alike; k = all is the clean run for neurons, whose one writing unit explains it all;
    writes outside the scope stay clean."""
    from clt_bench.baseline.circuits import Circuit, Node
    from clt_bench.compare.comparator import comparator_explained, comparator_layers
    from clt_bench.compare.units import scoped

    bridge, clt, fid = planted
    truth = Circuit("t", (Node("END", LAYER, "mlp"), Node("YY", 0, "mlp")))
    assert comparator_layers(truth) == [LAYER]
    _, ev = split_halves(len(batch))
    eb = batch.subset(ev)
    _, cache = bridge.run_with_cache(eb.corrupted)
    end = eb.end_pos
    name = f"blocks.{LAYER}.hook_mlp_out"

    def corrupt_end(y, hook):
        y = y.clone()
        y[:, end] = cache[name][:, end]
        return y

    expected = _pd(bridge, eb.clean, eb, [(name, corrupt_end)])
    clean = _pd(bridge, eb.clean, eb)
    assert clean - expected > 0.05, "setup: the scoped output carries the task"
    out = comparator_explained(bridge, {"neuron": None, "clt": clt}, batch, truth, 3, 3)
    for kind in ("neuron", "clt"):
        assert out[kind]["prob_diff_comparator_corrupted"] == pytest.approx(expected, abs=1e-6)
        assert out[kind]["prob_diff_clean"] == pytest.approx(clean, abs=1e-6)
    assert out["neuron"]["top"][0] == [LAYER, NEURON]
    assert out["neuron"]["explained"][1] == pytest.approx(1.0, abs=1e-5)
    assert out["clt"]["top"][0] == [LAYER, fid]
    units = scoped(neuron_units(bridge, eb.clean, eb.corrupted), [LAYER], end)
    assert [b.layer for b in units.blocks] == [LAYER]
    assert float(units.blocks[0].delta[:, :end].abs().sum()) == 0.0
