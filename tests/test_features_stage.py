"""The features and compare stages end to end on a tiny random bridge with a random CLT."""

from __future__ import annotations

import csv
import json
import math

import pytest
from helpers import tiny_bridge

from clt_bench.clt.circuit_tracer_io import save_clt
from clt_bench.compare.stage import run_compare_stage
from clt_bench.config import load_config
from clt_bench.features.stage import run_features_stage, task_prompts
from clt_bench.graphs.local_replacement import build_replacement
from clt_bench.graphs.random_clt import random_clt
from clt_bench.models.sources import LoadedModel
from clt_bench.pipeline import link_shared


@pytest.mark.slow
def test_features_and_compare_stages(tmp_path, tokenizer):
    bridge = tiny_bridge(n_layer=2, n_embd=32, seed=0)
    for p in bridge.parameters():
        p.requires_grad_(False)
    loaded = LoadedModel("tiny", bridge, tokenizer)
    cfg = load_config(
        "toy",
        [
            "graphs.n_prompts=6",
            "activations.eval_tokens=256",
            "features.top_k=5",
            "features.n_plots=2",
            "features.curve_dense=4",
            "task.family_n=6",
        ],
    )
    batch = task_prompts(cfg, loaded)
    assert len(batch) == 6 and len(set(batch.yy.tolist())) == 6
    rm0 = build_replacement(bridge, random_clt(2, 32, 64), batch.clean)
    clt = random_clt(
        2,
        32,
        64,
        activation="relu",
        seed=3,
        rate=0.1,
        decoder_scale=1.0,
        calibrate_on=rm0.resid_mid.reshape(-1, 2, 32),
    )
    save_clt(clt, tmp_path / "clt")
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "circuit.json").write_text(
        json.dumps({"name": "discovered", "components": {"END": ["mlp1", "1.0"], "YY": ["mlp0"]}})
    )
    s = run_features_stage(cfg, loaded, tmp_path, progress=False)
    assert s["n_selected"] == 5 and s["n_prompts"] == 6
    out = tmp_path / "features"
    for name in (
        "features.csv",
        "features.md",
        "ranking.json",
        "metrics.json",
        "heatmaps.safetensors",
        "heatmap_grid.png",
    ):
        assert (out / name).is_file(), name
    assert len(list(out.glob("heatmap_0*.png"))) == 2
    header = (out / "features.csv").read_text().splitlines()[0].split(",")
    for col in (
        "label",
        "gt_corr",
        "large_zz_corr",
        "parity_corr",
        "yy_fraction",
        "pd_contribution",
        "pd_direct_contribution",
        "mult5_corr",
        "delta_pd_constrained",
        "delta_pd_free",
        "via",
        "contexts",
    ):
        assert col in header
    # pair ablations among the top 5: 10 pairs
    assert len((out / "interactions.csv").read_text().splitlines()) == 1 + 10
    assert (out / "interactions.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON
    assert metrics["interaction_share"] is None or metrics["interaction_share"] >= 0
    assert "spearman_contribution_vs_ablation" not in metrics
    assert {
        "spearman_direct_contribution_vs_constrained_ablation",
        "spearman_total_contribution_vs_free_ablation",
    } <= set(metrics)
    rows = list(csv.DictReader((out / "features.csv").open()))
    # like with like: the direct first-order contribution predicts the constrained ablation
    # (a direct effect through a softmax) to first order on this tiny, weakly-coupled model
    for r in rows:
        direct, constrained = float(r["pd_direct_contribution"]), float(r["delta_pd_constrained"])
        assert abs(constrained + direct) <= 0.2 * abs(direct) + 1e-6, r["feature"]
    # a PLT sub-run as the plt stage leaves it: its own transcoder and features, shared baseline
    plt = random_clt(
        2,
        32,
        64,
        activation="relu",
        seed=4,
        rate=0.1,
        decoder_scale=1.0,
        cross_layer=False,
        calibrate_on=rm0.resid_mid.reshape(-1, 2, 32),
    )
    save_clt(plt, tmp_path / "plt" / "clt")
    link_shared(tmp_path, tmp_path / "plt", ["baseline"])
    run_features_stage(cfg, loaded, tmp_path / "plt", progress=False)
    c = run_compare_stage(cfg, loaded, tmp_path, progress=False)
    assert c["circuit"] == "discovered"
    assert {"plt_units_80", "plt_replacement_prob_diff", "plt_influence_share_in_circuit"} <= set(c)
    side = list(csv.DictReader((tmp_path / "compare" / "transcoders.csv").open()))
    assert list(side[0]) == ["measure", "clt", "plt", "neurons"]
    assert side[0]["clt"] == str(c["clt_units_50"]) and side[0]["plt"] == str(c["plt_units_50"])
    fams = {r["family"]: r for r in csv.DictReader((tmp_path / "compare" / "families.csv").open())}
    assert {"hanna", "descending", "arithmetic_exact", "bc"} <= set(fams)
    assert "exact relation" in fams["arithmetic_exact"]["note"]
    hanna = fams["hanna"]
    assert math.isfinite(float(hanna["median_feature_pd_kept"]))
    ratios = (
        "clt_replacement_pd_ratio",
        "plt_replacement_pd_ratio",
        "faithfulness_components_ratio",
    )
    if float(hanna["model_prob_diff"]) > 0:
        for key in ratios:
            assert math.isfinite(float(hanna[key])), key
    else:  # a ratio to a non-positive model PD is undefined: left empty, and the note says why
        assert all(hanna[key] == "" for key in ratios)
        assert hanna["note"].startswith("ratios undefined:")
    kept = list(csv.DictReader((tmp_path / "compare" / "feature_generalisation.csv").open()))
    assert len(kept) == 5 and "hanna" in kept[0] and "arithmetic_exact" not in kept[0]
    overlap = list(csv.DictReader((tmp_path / "compare" / "overlap.csv").open()))
    assert {r["transcoder"] for r in overlap} == {"clt", "plt"}
    assert 0.0 <= c["influence_share_in_circuit"] <= 1.0
    units = (tmp_path / "compare" / "units_needed.csv").read_text().splitlines()
    assert units[0] == "unit_kind,k,prob_diff,normalized"
    for kind in ("mlp_neurons", "clt_features", "plt_features"):
        rows = [r.split(",") for r in units[1:] if r.startswith(kind + ",")]
        assert rows[0][1] == "0" and float(rows[0][3]) == pytest.approx(0.0, abs=1e-6)
        assert float(rows[-1][3]) == pytest.approx(1.0, abs=1e-4)
    assert {"neuron_units_80", "clt_units_80", "clt_units_50"} <= set(c)
    for name in (
        "overlap.csv",
        "overlap.md",
        "units_needed.csv",
        "units_needed.png",
        "units_table.md",
        "metrics.json",
    ):
        assert (tmp_path / "compare" / name).is_file(), name
