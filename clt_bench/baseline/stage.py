"""The baseline stage: the known circuit (published or rediscovered), its faithfulness and neurons.

Writes ``<out>/baseline/``: circuit.json, faithfulness.json, neurons.json, units_needed.csv/.png,
path-patching heatmaps per step, circuit_graph.png, circuit_heatmap.png, neuron panels.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

import torch

from clt_bench.baseline.circuit_figures import (
    circuit_graph,
    neuron_panels,
    neuron_scatter,
    step_heatmap,
    units_curve,
)
from clt_bench.baseline.circuits import Circuit, load_circuit, validate_circuit
from clt_bench.baseline.discovery import Step, discover_circuit
from clt_bench.baseline.faithfulness import evaluate_circuit
from clt_bench.baseline.ground_truth import discovery_scores, known_circuit
from clt_bench.baseline.neurons import analyse_neurons, pick_layer
from clt_bench.baseline.patching import PatchContext
from clt_bench.config import BaselineConfig, RunConfig, with_section
from clt_bench.io import read_json, run_metadata, save_tensors, write_json, write_text
from clt_bench.models import LoadedModel
from clt_bench.plots import yy_zz_heatmap
from clt_bench.task.metrics import heatmap_rows, yy_heatmap
from clt_bench.task.spec import load_task
from clt_bench.task.stage import load_task_batch

log = logging.getLogger(__name__)
OUTPUTS = ("circuit.json", "faithfulness.json", "neurons.json", "units_needed.csv")
SUMMARY_KEYS = (
    "model_prob_diff",
    "corrupted_prob_diff",
    "circuit_prob_diff",
    "faithfulness_components_ratio",
    "normalized_faithfulness_components",
    "circuit_paths_prob_diff",
    "faithfulness_paths_ratio",
    "normalized_faithfulness_paths",
    "faithfulness_paths_defined",
    "faithfulness_paths_undefined_reason",
    "faithfulness_ratio_undefined_reason",
    "necessity_prob_diff",
    "random_control_prob_diff",
    "random_control_ratio",
    "model_cutoff_sharpness",
    "circuit_cutoff_sharpness",
    "necessity_cutoff_sharpness",
    "random_control_cutoff_sharpness",
    "circuit_size",
    "discovery_node_precision",
    "discovery_node_recall",
    "discovery_edge_precision",
    "discovery_edge_recall",
)


def _circuit(cfg: RunConfig, ctx: PatchContext, loaded: LoadedModel) -> tuple[Circuit, list[Step]]:
    bcfg = cfg.baseline
    dctx = ctx.subset(bcfg.discovery_examples)
    if bcfg.circuit == "discovered":
        return discover_circuit(dctx, bcfg, loaded.name)
    circuit = load_circuit(bcfg.circuit)
    # the direct-effect sweep, for the heatmap of a published circuit
    one = with_section(cfg, "baseline", max_steps=1).baseline
    _, steps = discover_circuit(dctx, one, loaded.name)
    return circuit, steps


def units_csv(curve: list[tuple[int, float, float]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["k", "prob_diff", "fraction_of_model_pd"])
    for k, p, f in curve:
        w.writerow([k, f"{p:.6f}", f"{f:.6f}"])
    return buf.getvalue()


def _summary(faith: dict[str, Any], circuit: Circuit, wall: float) -> dict[str, Any]:
    out = {k: faith[k] for k in SUMMARY_KEYS if k in faith}
    out["circuit"] = circuit.name
    out["components"] = circuit.components()
    out["wall_seconds"] = wall
    return out


def load_baseline_summary(out_dir: Path) -> dict[str, Any]:
    """A finished baseline stage's faithfulness numbers and circuit summary."""
    stage = Path(out_dir) / "baseline"
    done = read_json(stage / "faithfulness.json")
    circuit = load_circuit(str(stage / "circuit.json"))
    return _summary(done, circuit, done.get("wall_seconds", 0.0))


def run_baseline_stage(cfg: RunConfig, loaded: LoadedModel, out_dir: Path) -> dict[str, Any]:
    """Evaluate (and, for ``baseline.circuit = "discovered"``, find) the circuit; write baseline/.

    Returns the faithfulness numbers and a circuit summary.
    """
    stage = Path(out_dir) / "baseline"
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    bcfg: BaselineConfig = cfg.baseline
    n_heads = int(loaded.bridge.cfg.n_heads)
    if bcfg.circuit != "discovered":
        validate_circuit(load_circuit(bcfg.circuit), loaded.n_layers, n_heads)
    batch = load_task_batch(cfg, loaded)
    spec = load_task(cfg.task.task)
    batch = batch.subset(list(range(min(bcfg.n_examples, len(batch)))))
    ctx = PatchContext.build(loaded.bridge, batch, "clean", bcfg.batch_size)
    times["caches"] = time.perf_counter() - t0
    circuit, steps = _circuit(cfg, ctx, loaded)
    validate_circuit(circuit, loaded.n_layers, n_heads)
    times["discovery"] = time.perf_counter() - t0 - sum(times.values())
    per_prompt: dict[str, torch.Tensor] = {}
    faith, circ_readout = evaluate_circuit(ctx, circuit, bcfg.n_random, bcfg.seed, per_prompt)
    save_tensors(stage / "per_prompt.safetensors", per_prompt)  # the report's intervals
    times["evaluation"] = time.perf_counter() - t0 - sum(times.values())
    truth = known_circuit(loaded.name)
    if truth is not None and circuit.name != truth.name:  # graded against the planted circuit
        gt = discovery_scores(circuit, truth)
        faith["ground_truth"] = gt
        for k in ("node_precision", "node_recall", "edge_precision", "edge_recall"):
            if gt[k] is not None:
                faith[f"discovery_{k}"] = round(gt[k], 4)

    figures: list[Path | None] = [
        step_heatmap(s, n_heads, stage / f"path_patching_step{s.index}.png", loaded.name)
        for s in steps
    ]
    figures.append(circuit_graph(circuit, loaded.n_layers, stage / "circuit_graph.png"))
    rows = heatmap_rows(batch.n_answers)
    heat = yy_heatmap(circ_readout.probs, batch.yy, rows).numpy()
    figures.append(
        yy_zz_heatmap(  # rows YY = 2..; an exact task's answer per row marked, else ZZ = YY
            heat,
            stage / "circuit_heatmap.png",
            f"{loaded.name}: circuit '{circuit.name}' only, mean p(ZZ|YY)",
            axes=(spec.question_label, spec.answer_label),
            answers=batch.row_answers(rows),
        )
    )

    nctx = ctx.subset(bcfg.neuron_examples)
    layer, mlp_direct = pick_layer(nctx, circuit)
    if bcfg.neuron_layer >= 0:
        layer = bcfg.neuron_layer
    na = analyse_neurons(nctx, layer, bcfg.top_neurons, bcfg.neuron_candidates, bcfg.curve_dense)
    write_text(stage / "units_needed.csv", units_csv(na.curve))
    figures += [
        units_curve(na, stage / "units_needed.png", loaded.name),
        neuron_panels(
            na,
            bcfg.top_neurons,
            stage / "neurons_outer_product.png",
            loaded.name,
            batch.row_answers(rows),
        ),
        neuron_scatter(na, stage / "neurons_lens_vs_patching.png", loaded.name),
    ]
    neurons = {
        "mlp_direct_effects_prob_diff": {f"mlp{k}": v for k, v in mlp_direct.items()},
        "n_examples": nctx.n,
        **na.to_dict(bcfg.top_neurons),
        "outer_products": {
            str(n): [[round(float(v), 6) for v in row] for row in m.tolist()]
            for n, m in na.outer.items()
        },
    }
    times["neurons"] = time.perf_counter() - t0 - sum(times.values())
    wall = time.perf_counter() - t0

    meta = run_metadata(config=cfg.baseline, seeds={"dataset": batch.seed, "random": bcfg.seed})
    write_json(stage / "neurons.json", neurons)
    write_json(
        stage / "circuit.json",
        {**circuit.to_dict(), "discovery_steps": [s.to_dict() for s in steps], **run_metadata()},
    )
    faith_out = {
        "model": loaded.name,
        "circuit": circuit.name,
        "template": batch.template,
        **faith,
        "published": circuit.published,
        "neuron_mlp": f"mlp{layer}",
        "wall_seconds": round(wall, 3),
        "phase_seconds": {k: round(v, 3) for k, v in times.items()},
        "figures": [p.name for p in figures if p is not None],
        **meta,
    }
    write_json(stage / "faithfulness.json", faith_out)
    log.info("baseline stage wrote %s in %.1fs", stage, wall)
    return _summary(faith_out, circuit, round(wall, 3))


def _ratio(s: dict[str, Any], key: str, other_reason: str = "") -> str:
    """A ratio to the model's PD, or why it is undefined (the model's PD is not positive, else
    ``other_reason``'s entry)."""
    if s.get(key) is not None:
        return f"{s[key]:.3f}"
    why = s.get("faithfulness_ratio_undefined_reason")
    if not why and other_reason:
        why = s.get(other_reason, "")
    return f"undefined: {why}"


def format_baseline_table(s: dict[str, Any]) -> str:
    rand = s.get("random_control_prob_diff") or {}
    size = s.get("circuit_size", {})
    rows = [
        ("circuit", s["circuit"]),
        ("components", "; ".join(f"{p}: {' '.join(c) or '-'}" for p, c in s["components"].items())),
        (
            "size",
            f"{size.get('nodes')} of {size.get('candidate_nodes')} (component, position) "
            f"nodes ({size.get('heads')} heads, {size.get('mlps')} MLPs)",
        ),
        ("model_prob_diff", f"{s['model_prob_diff']:.3f}"),
        ("corrupted_prob_diff", f"{s['corrupted_prob_diff']:.3f}"),
        ("circuit_prob_diff", f"{s['circuit_prob_diff']:.3f}"),
        ("faithfulness_components_ratio", _ratio(s, "faithfulness_components_ratio")),
        ("circuit_paths_prob_diff", f"{s['circuit_paths_prob_diff']:.3f}"),
        (
            "faithfulness_paths_ratio",
            _ratio(s, "faithfulness_paths_ratio", "faithfulness_paths_undefined_reason"),
        ),
        ("necessity_prob_diff", f"{s['necessity_prob_diff']:.3f}"),
        (
            "random_control_prob_diff",
            f"{rand.get('mean', float('nan')):.3f} ± {rand.get('std', float('nan')):.3f}",
        ),
        ("random_control_ratio", _ratio(s, "random_control_ratio")),
        ("wall_seconds", f"{s['wall_seconds']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
