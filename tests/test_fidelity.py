"""Issue 21 (fidelity): no degenerate or unfair number in the headline, labels that match what
features do, interactions measured as a set. One test (or more) per item."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import tiny_bridge

from clt_bench.baseline.circuits import make_circuit
from clt_bench.baseline.discovery import discover_circuit
from clt_bench.baseline.faithfulness import evaluate_circuit, paths_undefined_reason
from clt_bench.baseline.patching import PatchContext, Sender, all_senders
from clt_bench.baseline.path_faithfulness import EMBED, clean_input_path, hanna_paths
from clt_bench.compare.stage import transcoder_table
from clt_bench.compare.units import (
    feature_units,
    neuron_units,
    split_halves,
    units_needed_curve,
)
from clt_bench.config import BaselineConfig, load_config
from clt_bench.features.ablation import free_delta_pd, pd_of
from clt_bench.features.interactions import joint_ablation, set_interactions, set_sizes
from clt_bench.features.shape_scores import (
    LABELS,
    YY_VALUES,
    ZZ_VALUES,
    LabelRule,
    label_decision,
    label_feature,
    labels_testable,
    shape_scores,
)
from clt_bench.features.stage import ALL_ACTIVE, all_feature_labels, label_counts
from clt_bench.features.task_attributions import TaskAttributions, influence_ranking, one_per_yy
from clt_bench.graphs.random_clt import random_clt
from clt_bench.graphs.stage import prompt_distribution_issue
from clt_bench.report.headline import (
    beside,
    context_header,
    context_note,
    headline_rows,
    metric_notes,
    stage_intervals,
    with_undefined,
)
from clt_bench.task.dataset import build_dataset


def test_every_label_count_of_features_reaches_compares_table(tmp_path):
    """The features stage's label counts (``n_single_yy`` ...) are the keys compare reads."""
    cfg = load_config("quick")
    rows = [{"label": lab} for lab in LABELS]
    every = [{"label": lab} for lab in LABELS for _ in range(2)]
    summary = {**label_counts(rows), **label_counts(every, suffix=ALL_ACTIVE)}
    summary["not_testable"] = ["parity"]
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "stage.json").write_text(json.dumps({"summary": summary}))
    side = transcoder_table(cfg, tmp_path, {"clt": []}, [], {})
    measures = {r["measure"]: r for r in side}
    for lab in LABELS:
        top, every = f"labels (top-K by influence): {lab}", f"labels (all active features): {lab}"
        assert top in measures and every in measures, lab
        if lab == "parity":  # a label the model's own output gives nothing to find
            assert measures[top]["clt"] == measures[every]["clt"] == "not testable on this model"
        else:
            assert (measures[top]["clt"], measures[every]["clt"]) == (1, 2), lab


# --- circuit discovery and path-level faithfulness -------------------------------------------


@pytest.fixture(scope="module")
def one_layer_ctx(tokenizer, task_spec):
    """A one-layer model: its END heads' keys/values can read only the embedding at YY."""
    bridge = tiny_bridge(n_layer=1, n_head=2, n_embd=32, seed=4)
    for p in bridge.parameters():
        p.requires_grad_(False)
    batch = build_dataset(task_spec, tokenizer, "discovery").subset(list(range(12)))
    bridge.unembed.original_component.bias[batch.answer_ids] += 20.0
    with torch.no_grad():
        for block in bridge.original_model.transformer.h:
            block.attn.c_attn.weight.mul_(8.0)
            block.attn.c_proj.weight.mul_(30.0)
            block.mlp.c_proj.weight.mul_(10.0)
    return PatchContext.build(bridge, batch, "clean", rows=256)


def test_embedding_is_a_sender_and_its_edge_reaches_the_path_spec(one_layer_ctx):
    ctx = one_layer_ctx
    senders = all_senders(2, 2, [ctx.end_pos, ctx.yy_pos], embed=True)
    assert Sender("embed", 0, ctx.yy_pos) in senders and len(senders) == 2 * (1 + 2 * 3)
    bcfg = BaselineConfig(head_threshold=0.01, mlp_threshold=0.01, max_steps=3)
    circuit, steps = discover_circuit(ctx, bcfg, "tiny")
    heads = [n for n in circuit.at("END") if n.kind == "head"]
    assert heads, "the one-layer model moves YY to END with a layer-0 head"
    assert not circuit.at("YY"), "nothing but the embedding is upstream of a layer-0 head"
    # the embedding carries the YY token into those heads' keys/values: discovery keeps it
    assert any(("embed@YY", h.label) in circuit.edges for h in heads)
    assert any(s.kept_embed == ["embed@YY"] and "YY" in s.embed_effects for s in steps)
    assert "embed_effects_fraction_of_gap" in steps[-1].to_dict()
    spec = hanna_paths(circuit)
    assert any((EMBED, f"{h.label}:k") in spec.edges for h in heads)
    assert clean_input_path(spec)
    faith, _ = evaluate_circuit(ctx, circuit, n_random=1)
    assert faith["faithfulness_paths_defined"] and not faith["faithfulness_paths_undefined_reason"]
    assert faith["normalized_faithfulness_paths"] > 0.05  # the clean YY token gets through


def test_no_clean_input_path_is_undefined_not_a_number(one_layer_ctx):
    ctx = one_layer_ctx
    circuit = make_circuit("end-only", {"END": ["0.0", "0.1", "mlp0"]})  # no embed edge
    assert not clean_input_path(hanna_paths(circuit))
    faith, _ = evaluate_circuit(ctx, circuit, n_random=1)
    assert faith["faithfulness_paths_defined"] is False
    assert "no clean input path" in faith["faithfulness_paths_undefined_reason"]
    assert faith["faithfulness_paths_ratio"] is None
    assert faith["normalized_faithfulness_paths"] is None
    # the PD itself is still reported: the corrupted run's, exactly
    assert faith["circuit_paths_prob_diff"] == pytest.approx(faith["corrupted_prob_diff"], abs=1e-6)
    # a run that equals the corrupted one on every prompt is undefined even with a path
    pd = torch.linspace(-0.5, 0.5, ctx.n, dtype=torch.float64)
    spec = hanna_paths(make_circuit("x", {"END": ["0.0"]}, edges=[(EMBED, "a0.h0@END")]))
    assert clean_input_path(spec)
    assert "equals the corrupted run" in paths_undefined_reason(spec, pd + 1e-9, pd)
    assert paths_undefined_reason(spec, pd + 1e-3, pd) == ""


# --- units needed: the error term clean or corrupted ---------------------------------------


def test_units_needed_error_corrupted_endpoints(tokenizer, task_spec):
    """error_corrupted: k = 0 is every MLP output corrupted (the neurons' PD_0, like for like);
    k = all is the clean run with only the transcoder's error term corrupted."""
    batch = one_per_yy(build_dataset(task_spec, tokenizer, "discovery"), 12)
    bridge = tiny_bridge(n_layer=2, n_embd=32, seed=2)
    for p in bridge.parameters():
        p.requires_grad_(False)
    bridge.unembed.original_component.bias[batch.answer_ids] += 20.0
    _, cache = bridge.run_with_cache(batch.clean)
    mid = torch.stack([cache[f"blocks.{i}.hook_resid_mid"] for i in range(2)], 2)
    clt = random_clt(
        2, 32, 24, activation="relu", seed=3, rate=0.2, decoder_scale=1.0, skip=True,
        calibrate_on=mid.reshape(-1, 2, 32),
    )  # fmt: skip
    eb = batch.subset(split_halves(len(batch))[1])
    c = bridge.run_with_cache(eb.clean)[1]
    x = bridge.run_with_cache(eb.corrupted)[1]

    def pd_with(outs):
        hooks = [(f"blocks.{i}.hook_mlp_out", lambda y, hook, i=i: outs[i]) for i in range(2)]
        with torch.no_grad():
            logits = bridge.run_with_hooks(eb.clean, fwd_hooks=hooks)[:, -1]
        return float(pd_of(logits, eb).mean())

    mlp_x = [x[f"blocks.{i}.hook_mlp_out"] for i in range(2)]
    stack = lambda cache: torch.stack(  # noqa: E731
        [cache[f"blocks.{i}.hook_resid_mid"] for i in range(2)], 2
    )
    recon = clt.decode(clt.encode(stack(c))) - clt.decode(clt.encode(stack(x)))
    all_clean_error_corrupted = pd_with([mlp_x[i] + recon[:, :, i] for i in range(2)])

    curves = {
        e: units_needed_curve(
            bridge,
            lambda cl, co, e=e: feature_units(bridge, clt, cl, co, "clt_features", e),
            batch,
            dense=3,
            candidates=3,
        )
        for e in ("clean", "corrupted")
    }
    neurons = units_needed_curve(
        bridge, lambda cl, co: neuron_units(bridge, cl, co), batch, dense=3, candidates=3
    )
    err = curves["corrupted"]
    assert err.kind == "clt_features_error_corrupted" and curves["clean"].kind == "clt_features"
    assert err.prob_diff[0] == pytest.approx(pd_with(mlp_x), abs=1e-5)
    assert err.prob_diff[0] == pytest.approx(neurons.prob_diff[0], abs=1e-5)
    assert err.prob_diff[-1] == pytest.approx(all_clean_error_corrupted, abs=1e-5)
    # the error-clean variant keeps its own endpoints: k = all is the clean run
    assert curves["clean"].prob_diff[-1] == pytest.approx(float(err.clean.mean()), abs=1e-5)
    assert abs(curves["clean"].prob_diff[0] - err.prob_diff[0]) > 1e-6


# --- feature labels ---------------------------------------------------------------------------

Y, Z = YY_VALUES[:, None], ZZ_VALUES[None, :]


def test_comparator_and_large_zz_are_told_apart_by_partial_correlations():
    """The two templates correlate at ~0.72: each pure pattern clears both raw thresholds, and the
    partial correlation says which one it is; the runner-up is reported with its scores."""
    comp = shape_scores((Z > Y).astype(float))
    ramp = shape_scores(np.broadcast_to(Z, (97, 100)).astype(float))
    assert comp.large_zz_corr > 0.7 and ramp.gt_corr > 0.7  # both clear 0.5
    assert comp.gt_partial == pytest.approx(1.0) and abs(comp.large_zz_partial) < 1e-3
    assert ramp.large_zz_partial == pytest.approx(1.0) and abs(ramp.gt_partial) < 1e-3
    d = label_decision(comp, 1.0)
    assert (d.label, d.secondary, d.runner_up) == ("comparator", "", "large-number promoter")
    assert d.runner_up_score == pytest.approx(comp.large_zz_corr)
    assert abs(d.runner_up_partial) < 1e-3 and d.margin == pytest.approx(1 - comp.large_zz_corr)
    d = label_decision(ramp, 1.0)
    assert (d.label, d.secondary, d.runner_up) == ("large-number promoter", "", "comparator")


def test_gated_feature_is_a_range_comparator():
    """Fires for YY 37-98 and promotes ZZ 51-96 (the toy's L0/373): not a constant promoter."""
    h = np.zeros((97, 100))
    rows = YY_VALUES >= 37
    h[rows] = ((Z >= 51) & (Z <= 96)).astype(float)[0]
    s = shape_scores(h)
    assert label_decision(s, float(rows.mean())).label == "range comparator"
    assert label_feature(s, 1.0) == "large-number promoter"  # the same rows, ungated
    assert label_feature(s, 0.1) == "narrow comparator"
    assert "range comparator" in LABELS
    # the gating threshold is the config's
    rule = LabelRule.from_config(load_config("quick", ["features.gated_yy_fraction=0.5"]).features)
    assert label_decision(s, float(rows.mean()), rule).label == "large-number promoter"


def test_secondary_label_is_kept():
    s = shape_scores((Z > Y) + 0.8 * (Z % 5 == 0))
    d = label_decision(s, 1.0)
    assert d.label == "comparator" and d.secondary == "multiple-of-5 promoter"
    assert label_decision(shape_scores((Z > Y).astype(float)), 1.0).secondary == ""
    # a gated mixture of comparator and ramp is one thing: no secondary of the same name
    h = np.where(Y >= 37, (Z > Y) + 0.02 * Z, 0.0)
    d = label_decision(shape_scores(h), float((YY_VALUES >= 37).mean()))
    assert d.label == "range comparator" and d.secondary == ""
    d = label_decision(shape_scores(h), 1.0)  # ungated: both names, the larger raw score first
    assert {d.label, d.secondary} == {"comparator", "large-number promoter"}


def test_multiple_of_5_and_parity_testable_only_where_the_model_shows_them():
    logp = np.log(np.where(Z > Y, 0.018, 0.0005))  # a comparator model, no round-number bias
    assert labels_testable(shape_scores(logp)) == {
        "multiple-of-5 promoter": False,
        "parity": False,
    }
    biased = shape_scores(logp + 0.5 * (Z % 5 == 0))
    assert labels_testable(biased)["multiple-of-5 promoter"]
    assert not labels_testable(biased)["parity"]


def _attributions(n_prompts: int) -> TaskAttributions:
    """Two features on prompts YY = 2..: key 0 a comparator on every prompt, key 1 active on one
    prompt only (strong there, but far less influence summed over prompts)."""
    yy = np.arange(2, 2 + n_prompts)
    pairs = [(p, 0, np.where(yy[p] < ZZ_VALUES, 1.0, -1.0)) for p in range(n_prompts)]
    pairs.append((3, 1, np.where(yy[3] < ZZ_VALUES, 2.0, -2.0)))
    pp = np.array([p for p, _, _ in pairs])
    pk = np.array([k for _, k, _ in pairs])
    ans = np.stack([a for _, _, a in pairs])
    r = len(pairs)
    return TaskAttributions(
        n_features=10, n_layers=1, yy=yy, yy_pos=1, end_pos=2,
        pair_prompt=pp, pair_key=pk, answer=ans, logit_diff=ans.sum(1) / 100,
        pd=np.zeros(r), pos_logit_diff=np.zeros((r, 3)), write_effects=np.zeros((r, 1)),
        act_sum=np.ones(r), act_prompt=pp, act_pos=np.full(r, 2), act_key=pk,
        act_value=np.ones(r), direct_x=np.zeros((r, 4), np.float32),
        x_end=np.zeros((n_prompts, 4)), clean_prob_diff=0.0, clean_logit_diff=0.0,
    )  # fmt: skip


def test_labels_are_counted_over_all_active_features():
    att = _attributions(20)
    keys, _ = influence_ranking(att)
    assert keys.tolist() == [0, 1]  # the single-YY feature never makes a top-1
    labels = all_feature_labels(att, keys, LabelRule())
    assert labels[1] == "single-YY" and labels[0] != "single-YY"
    counts = label_counts([{"label": lab} for lab in labels], suffix=ALL_ACTIVE)
    assert counts["n_single_yy_all_active"] == 1


# --- interactions as a set, and the free ablation's exactness ----------------------------------


def test_set_ratio_and_its_interval():
    rng = np.random.default_rng(0)
    single = rng.normal(-0.02, 0.01, (20, 40))  # [K, n] single dPD per prompt
    joint = np.stack([2.5 * single[:k].sum(0) for k in (5, 10, 20)])
    sets = set_interactions(single, joint, [5, 10, 20], n_boot=200, seed=1)
    assert [s["k"] for s in sets] == [5, 10, 20]
    for s in sets:
        assert s["joint_sum_ratio"] == pytest.approx(2.5)
        assert s["ci_lo"] == pytest.approx(2.5) and s["ci_hi"] == pytest.approx(2.5)
        assert s["joint_dpd"] == pytest.approx(2.5 * s["sum_single_dpd"])
    noisy = set_interactions(single, joint + rng.normal(0, 0.05, joint.shape), [5, 10, 20], 200)
    assert all(s["ci_lo"] < s["joint_sum_ratio"] < s["ci_hi"] for s in noisy)
    assert set_sizes(20) == [5, 10, 20] and set_sizes(7) == [5] and set_sizes(4) == [4]


@pytest.fixture(scope="module")
def exact_model(tokenizer, task_spec):
    """A tiny model whose MLPs *are* a CLT: each MLP's output is replaced by the CLT's
    reconstruction from the live residual stream. ``zero`` lists features forced to 0."""
    batch = one_per_yy(build_dataset(task_spec, tokenizer, "discovery"), 8)
    bridge = tiny_bridge(n_layer=3, n_embd=32, seed=5)
    for p in bridge.parameters():
        p.requires_grad_(False)
    bridge.unembed.original_component.bias[batch.answer_ids] += 20.0
    bridge.original_model.transformer.ln_f.weight.mul_(10.0)  # the writes decide among answers
    _, cache = bridge.run_with_cache(batch.clean)
    mid = torch.stack([cache[f"blocks.{i}.hook_resid_mid"] for i in range(3)], 2)
    clt = random_clt(
        3, 32, 16, activation="relu", seed=6, rate=0.3, decoder_scale=30.0,
        calibrate_on=mid.reshape(-1, 3, 32),
    )  # fmt: skip
    for p in clt.parameters():
        p.requires_grad_(False)
    state = {"zero": [], "acts": {}}

    def at_mid(layer):
        def fn(module, args, x):  # resid_mid [b, pos, d]
            a = clt.activate(clt.pre_activations(x[..., None, :].expand(*x.shape[:2], 3, 32)))
            a = a[..., layer, :].clone()
            for lay, fid in state["zero"]:
                if lay == layer:
                    a[..., fid] = 0.0
            state["acts"][layer] = a

        return fn

    def at_out(layer):
        def fn(module, args, out):
            y = clt.b_dec[layer] / clt.output_scale[layer]
            for src in range(layer + 1):
                y = y + state["acts"][src] @ clt.layer_decoder(src, layer)
            return y.to(out.dtype)

        return fn

    # torch hooks on the hook points, registered first: they run before every TransformerLens
    # hook a later run adds (the free ablation's subtraction included) and are never removed
    for i in range(3):
        bridge.hook_dict[f"blocks.{i}.hook_resid_mid"].register_forward_hook(at_mid(i))
        bridge.hook_dict[f"blocks.{i}.hook_mlp_out"].register_forward_hook(at_out(i))
    return bridge, clt, batch, state


def _clean_acts(bridge, clt, batch, features):
    _, cache = bridge.run_with_cache(batch.clean)
    mid = torch.stack([cache[f"blocks.{i}.hook_resid_mid"] for i in range(3)], 2)
    a = clt.encode(mid)  # [n, pos, L, F]
    return [a[:, :, lay, fid].numpy() for lay, fid in features]


def test_free_ablation_does_not_double_count_on_an_exact_model(exact_model):
    """Removing a feature's decoder writes from the real model (whose downstream MLPs recompute)
    equals ablating it in the replacement model (every feature recomputed): no double counting
    of its cross-layer writes, for single features and for sets."""
    bridge, clt, batch, state = exact_model
    with torch.no_grad():  # the hooks are live: every MLP output is the CLT's reconstruction
        _, cache = bridge.run_with_cache(batch.clean)
        mid = torch.stack([cache[f"blocks.{i}.hook_resid_mid"] for i in range(3)], 2)
        out = torch.stack([cache[f"blocks.{i}.hook_mlp_out"] for i in range(3)], 2)
        assert torch.allclose(out, clt.decode(clt.encode(mid)), atol=1e-5)
    features = [(0, f) for f in range(16)]
    acts = _clean_acts(bridge, clt, batch, features)
    at_end = [float(acts[u][:, -1].sum()) for u in range(len(features))]
    live = [(u, features[u]) for u in np.argsort(at_end)[::-1][:3]]
    assert min(at_end[u] for u, _ in live) > 0  # layer-0 features at END: they write 3 layers
    feats = [f for _, f in live]
    fa = [acts[u] for u, _ in live]
    active = [np.nonzero(a.any(axis=1))[0] for a in fa]

    def replacement_dpd(zero):
        with torch.no_grad():
            base = pd_of(bridge(batch.clean)[:, -1], batch)
            state["zero"] = zero
            try:
                abl = pd_of(bridge(batch.clean)[:, -1], batch)
            finally:
                state["zero"] = []
        return (abl - base).numpy()  # [n]

    free = free_delta_pd(bridge, clt, batch, feats, fa, active, progress=False)
    for u, f in enumerate(feats):
        ref = replacement_dpd([f])
        assert np.abs(ref).max() > 1e-4, "setup: the feature matters"
        assert free[u] == pytest.approx(ref.mean(), rel=1e-3, abs=1e-7)
    joint = joint_ablation(bridge, clt, batch, feats, fa, [1, 3])
    assert np.allclose(joint[1], replacement_dpd(feats), rtol=1e-3, atol=1e-7)
    assert np.allclose(joint[0], replacement_dpd(feats[:1]), rtol=1e-3, atol=1e-7)


# --- the headline table -----------------------------------------------------------------------


def test_undefined_path_faithfulness_is_shown_as_such_never_beside_a_published_figure():
    flat = {"baseline.circuit_paths_prob_diff": -0.414, "baseline.corrupted_prob_diff": -0.414}
    results = {
        "baseline": {
            "faithfulness_paths_defined": False,
            "faithfulness_paths_undefined_reason": "the circuit has no clean input path",
        }
    }
    notes = metric_notes(results)
    rows = {m: (v, p) for m, v, p, _ in headline_rows(with_undefined(flat, notes))}
    assert rows["baseline.faithfulness_paths_ratio"] == ("undefined", "0.89")  # not a number
    assert rows["baseline.normalized_faithfulness_paths"] == ("undefined", "")
    # the degenerate PD is reported (it is the corrupted run's) but not beside Hanna's 0.727
    assert rows["baseline.circuit_paths_prob_diff"] == ("-0.414 (degenerate)", "")
    assert "no clean input path" in beside("baseline.faithfulness_paths_ratio", flat, {}, notes)
    # defined: the number, its published figure, and its partners from the same prompts
    flat["baseline.faithfulness_paths_ratio"] = 0.96
    rows = {m: (v, p) for m, v, p, _ in headline_rows(with_undefined(flat, metric_notes({})))}
    assert rows["baseline.faithfulness_paths_ratio"] == ("0.96", "0.89")
    text = beside("baseline.circuit_paths_prob_diff", flat | {"baseline.model_prob_diff": 0.8})
    assert text == "corrupted, same prompts -0.414; model, same prompts 0.8"


def test_natural_partners_are_shown_with_their_intervals():
    flat = {
        "graphs.influence_share_yy_task_prompts": 0.02,
        "graphs.influence_share_end_task_prompts": 0.88,
        "graphs.influence_share_rest_task_prompts": 0.1,
        "features.interaction_share": 0.148,
        "features.joint_sum_ratio_top5": 1.5,
        "features.joint_sum_ratio_top20": 2.5,
        "features.joint_sum_ratio_top10": 2.0,
        "compare.clt_units_80": 25,
    }
    results = {
        "compare": {
            "units_ci": {"clt_units_80": [14.0, 62.0], "clt_units_80_error_corrupted": [30, None]}
        },
        "features": {"joint_sum_ratio_ci": {"joint_sum_ratio_top20": [2.1, 2.9]}},
    }
    ci = stage_intervals(results)
    assert ci["compare.clt_units_80"] == [14.0, 62.0]
    assert beside("graphs.influence_share_yy_task_prompts", flat) == "END 0.88; rest 0.1"
    assert beside("features.interaction_share", flat, ci) == (
        "joint/sum top-5 1.5; joint/sum top-10 2; joint/sum top-20 2.5 [2.1, 2.9]"
    )
    assert beside("compare.clt_units_80", flat, ci) == "error corrupted never [30, never]"


def test_published_column_is_context_for_other_models():
    assert context_header("gpt2") == "published (GPT-2 small)"
    for model in ("toy", "planted", "gpt2-random"):
        assert context_header(model) == "context: GPT-2 small / other models"
        assert "not numbers that" in context_note(model) and "GPT-2 small" in context_note(model)


def test_graph_prompt_without_bos_is_flagged_for_a_bos_trained_model(tokenizer):
    cfg = load_config("quick")
    toy = SimpleNamespace(name="toy", tokenizer=tokenizer)
    bos = tokenizer.bos_token_id
    assert "no BOS" in prompt_distribution_issue(cfg, toy, [464, 1175])
    assert prompt_distribution_issue(cfg, toy, [bos, 383, 1175]) == ""
    planted = SimpleNamespace(name="planted", tokenizer=tokenizer)  # the same corpus
    assert "the planted model" in prompt_distribution_issue(cfg, planted, [464, 1175])
    real = load_config("quick", ["activations.corpus=fineweb"])
    gpt2 = SimpleNamespace(name="gpt2", tokenizer=tokenizer)
    assert prompt_distribution_issue(real, gpt2, [464, 1175]) == ""  # GPT-2: no BOS is normal
    notes = metric_notes({"graphs": {"out_of_distribution": {"seed_prompt": "no BOS"}}})
    assert "outside the training distribution" in notes["graphs.influence_share_yy_seed_prompt"]
