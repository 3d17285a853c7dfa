"""The baseline stage end to end on a tiny random model, and the toy's discovered circuit."""

from __future__ import annotations

import csv
import json

import pytest

from clt_bench.baseline.stage import run_baseline_stage
from clt_bench.config import load_config
from clt_bench.models.sources import LoadedModel
from clt_bench.models.toy import TOY_WEIGHTS

SMALL = [
    "baseline.n_examples=12",
    "baseline.discovery_examples=8",
    "baseline.n_random=2",
    "baseline.neuron_examples=6",
    "baseline.neuron_candidates=4",
    "baseline.curve_dense=3",
    "baseline.max_steps=2",
    "baseline.top_neurons=3",
    "baseline.head_threshold=0.0",
    "baseline.mlp_threshold=0.0",
]


def test_stage_outputs_on_tiny_model(tmp_path, tokenizer):
    from helpers import tiny_bridge

    bridge = tiny_bridge(n_layer=2, n_head=2, seed=1)
    loaded = LoadedModel("tiny", bridge, tokenizer)
    cfg = load_config("toy", SMALL)
    out = run_baseline_stage(cfg, loaded, tmp_path)
    d = tmp_path / "baseline"
    for name in (
        "circuit.json",
        "faithfulness.json",
        "neurons.json",
        "units_needed.csv",
        "units_needed.png",
        "circuit_graph.png",
        "circuit_heatmap.png",
        "path_patching_step1.png",
        "neurons_outer_product.png",
    ):
        assert (d / name).is_file(), name
    faith = json.loads((d / "faithfulness.json").read_text())
    for key in (
        "model_prob_diff",
        "corrupted_prob_diff",
        "circuit_prob_diff",
        "faithfulness_components_ratio",
        "circuit_paths_prob_diff",
        "faithfulness_paths_ratio",
        "necessity_prob_diff",
        "random_control_prob_diff",
        "circuit_cutoff_sharpness",
        "necessity_cutoff_sharpness",
    ):
        assert key in faith and key in out, key
    assert faith["faithfulness_components_ratio"] == pytest.approx(
        faith["circuit_prob_diff"] / faith["model_prob_diff"]
    )
    assert set(faith["random_control_prob_diff"]) == {"mean", "std", "min", "max"}
    # the per-prompt PD behind each mean (the report's bootstrap intervals), and its SVG figures
    from clt_bench.io import load_tensors

    per_prompt = load_tensors(d / "per_prompt.safetensors")
    for key, values in per_prompt.items():
        assert values.shape == (faith["n_examples"],), key
        assert float(values.mean()) == pytest.approx(faith[key], rel=1e-6, abs=1e-9), key
    assert set(per_prompt) >= {"model_prob_diff", "circuit_paths_prob_diff", "necessity_prob_diff"}
    assert (d / "circuit_graph.svg").is_file() and (d / "units_needed.svg").is_file()
    rows = list(csv.reader((d / "units_needed.csv").open()))
    assert rows[0] == ["k", "prob_diff", "fraction_of_model_pd"]
    ks = [int(r[0]) for r in rows[1:]]
    assert ks[0] == 0 and ks[-1] == bridge.cfg.d_mlp and ks == sorted(ks)
    # k = all neurons clean is the clean model
    assert float(rows[-1][2]) == pytest.approx(1.0, abs=1e-4)
    circ = json.loads((d / "circuit.json").read_text())
    assert circ["schema"] == "clt-bench/circuit/v1" and circ["provenance"]["source"] == "discovered"
    assert circ["provenance"]["head_threshold"] == 0.0
    # resume (the runner's): the same config reads the finished stage back (file untouched,
    # same numbers); resume off or a changed config recomputes it
    from clt_bench.baseline.stage import load_baseline_summary
    from clt_bench.pipeline import run_pipeline

    def run(c, resume=True):
        quiet = {"progress": lambda line: None, "model": loaded}
        run_pipeline(c, tmp_path / "r", ["baseline"], resume=resume, **quiet)
        return load_baseline_summary(tmp_path / "r")

    d = tmp_path / "r" / "baseline"
    first = run(cfg)
    stamp = (d / "faithfulness.json").stat().st_mtime_ns
    again = run(cfg)
    assert (d / "faithfulness.json").stat().st_mtime_ns == stamp
    assert again == first and first["circuit_prob_diff"] == pytest.approx(out["circuit_prob_diff"])
    fresh = run(cfg, resume=False)
    assert (d / "faithfulness.json").stat().st_mtime_ns != stamp
    assert fresh["circuit_prob_diff"] == pytest.approx(out["circuit_prob_diff"], abs=1e-9)
    stamp = (d / "faithfulness.json").stat().st_mtime_ns
    run(load_config("toy", [*SMALL, "baseline.n_random=3"]))
    assert (d / "faithfulness.json").stat().st_mtime_ns != stamp
    assert json.loads((d / "faithfulness.json").read_text())["n_random"] == 3


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    assert TOY_WEIGHTS.is_file(), "the toy model's weights ship with the package"
    from clt_bench.models import load_model

    cfg = load_config("toy")
    out = tmp_path_factory.mktemp("toy")
    return run_baseline_stage(cfg, load_model("toy"), out)


@pytest.mark.slow
def test_toy_discovered_circuit(toy_run):
    s = toy_run
    assert s["faithfulness_components_ratio"] >= 0.8
    assert s["necessity_prob_diff"] <= 0.0
    assert s["random_control_ratio"] <= 0.3
    size = s["circuit_size"]
    assert size["nodes"] <= size["candidate_nodes"] // 2
