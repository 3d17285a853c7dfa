"""The compare stage: the selected CLT features against the baseline circuit.

Reads ``<run>/features/ranking.json`` (the top-K features, their influence and write split),
the CLT (``<run>/clt``; a PLT in ``<run>/plt`` adds a PLT row), the baseline's ``circuit.json``;
for GPT-2 itself (by model identity, not shape) also the published circuits of ``baselines/``.
Writes ``<run>/compare/`` (the files: docs/architecture.md): the overlap of the top-K features
with each circuit, the units needed by each unit kind (``clt_bench.compare.units``), CLT vs PLT
vs MLP neurons, the generalisation across prompt families and, on a planted model, the grading
against the planted circuit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from clt_bench.artifacts import FeatureRanking, load_ranking, stage_summary
from clt_bench.baseline.circuit_overlap import (
    FeatureSite,
    influence_share,
    node_overlap,
    published_applies,
)
from clt_bench.baseline.circuits import PUBLISHED, Circuit, load_circuit, load_run_circuit
from clt_bench.baseline.faithfulness import ratio_undefined_reason
from clt_bench.baseline.ground_truth import KNOWN, known_circuit, yy_probe_scores
from clt_bench.baseline.patching import model_device
from clt_bench.clt.circuit_tracer_io import load_run_clt
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.compare.comparator import comparator_explained
from clt_bench.compare.curve import replacement_pd
from clt_bench.compare.effect_shares import SHARES, effect_shares
from clt_bench.compare.generalisation import generalisation, write_generalisation
from clt_bench.compare.ground_truth_figure import ground_truth_grid, influence_grid
from clt_bench.compare.units import (
    FRACTIONS,
    UnitSet,
    UnitsResult,
    bootstrap_needed,
    feature_units,
    neuron_units,
    units_needed_curve,
)
from clt_bench.config import RunConfig
from clt_bench.features.shape_scores import LABELS, label_key
from clt_bench.features.stage import ALL_ACTIVE, task_prompts
from clt_bench.io import (
    csv_text,
    json_safe,
    markdown_table,
    run_metadata,
    save_tensors,
    write_json,
    write_text,
)
from clt_bench.models import LoadedModel
from clt_bench.plots import save_figure
from clt_bench.task.dataset import TaskBatch
from clt_bench.task.stage import load_task_batch

log = logging.getLogger(__name__)
UNITS_DEFINITION = (
    "Units needed (one definition for every kind): the clean prompt runs with every MLP output "
    "replaced by clean MLP output - sum over units not kept of (a_clean - a_corrupted) x the "
    "unit's write, at every position; the top k units by clean-minus-corrupt effect (linear "
    "estimate, exact for the best candidates) are kept clean. Ranked on the even-indexed prompts, "
    "evaluated on the odd-indexed ones. normalized = (PD_k - PD_0) / (PD_clean - PD_0); a "
    "transcoder's error, skip and bias terms are not units and stay clean, so PD_0 is per kind "
    "(error_clean); the *_error_corrupted rows put the error term at its corrupted value too, so "
    "k = 0 is the corrupted MLP outputs, as for neurons, and k = all is the clean run with only "
    "the error corrupted. Intervals: 95 % bootstrap over evaluation prompts (ranking fixed)."
)


def circuits_to_compare(run_dir: Path, model_name: str) -> list[Circuit]:
    """The discovered/configured baseline circuit, plus the published circuits found in this very
    model (by identity: GPT-2's circuits for GPT-2, none for gpt2-random or other 12 x 12
    models)."""
    out = []
    own = load_run_circuit(run_dir)
    if own is not None:
        out.append(own)
    names = {c.name for c in out}
    for n in (*PUBLISHED, *KNOWN):  # published circuits and planted ones, in their own model
        if n not in names and published_applies(c := load_circuit(n), model_name):
            out.append(c)
    return out


def overlap_rows(
    sites: list[FeatureSite], write: list[list[float]], circuits: list[Circuit]
) -> list[dict[str, Any]]:
    return [
        {
            "circuit": c.name,
            "n_nodes": len(c.nodes),
            "influence_share": influence_share(sites, write, c) if sites else math.nan,
            **node_overlap(sites, c),
        }
        for c in circuits
    ]


def _md(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def f(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    return markdown_table(cols, ([f(r.get(c)) for c in cols] for r in rows)) + "\n"


def plot_curves(results: list[UnitsResult], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:
        ax.plot(r.ks, r.normalized, marker=".", label=f"{r.kind} ({r.n_units})")
    for frac in FRACTIONS:
        ax.axhline(frac, color="grey", lw=0.7, ls="--")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("units kept clean (k), ranked on the other half of the prompts")
    ax.set_ylabel("(PD_k - PD_0) / (PD_clean - PD_0)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    return save_figure(fig, path)


def units_results(
    cfg: RunConfig, loaded: LoadedModel, run_dir: Path, batch: TaskBatch
) -> tuple[list[UnitsResult], dict[str, Any]]:
    """The units-needed curve of every unit kind (neurons, the run's transcoder, a PLT in
    ``<run>/plt``) and the replacement PD of each transcoder."""
    fc = cfg.features
    bridge = loaded.bridge
    dev = model_device(bridge)
    kinds: list[tuple[str, CrossLayerTranscoder | None]] = [
        ("mlp_neurons", None),
        (f"{cfg.clt.kind}_features", load_run_clt(run_dir, device=dev)),
    ]
    if "plt" in transcoder_runs(cfg, run_dir):
        kinds.append(("plt_features", load_run_clt(run_dir / "plt", device=dev)))
    results: list[UnitsResult] = []
    repl: dict[str, dict[str, Any]] = {}
    for kind, clt in kinds:
        variants: list[Callable[[torch.Tensor, torch.Tensor], UnitSet]]
        if clt is None:
            variants = [partial(neuron_units, bridge)]
        else:
            variants = [
                partial(feature_units, bridge, clt, kind=kind, error=e)
                for e in ("clean", "corrupted")
            ]
            per: dict[str, Any] = {}
            repl[kind] = replacement_pd(bridge, clt, batch, cfg.activations.exclude_bos, per)
            repl[kind]["per_prompt"] = per  # for compare/per_prompt.safetensors
        for make in variants:
            results.append(
                units_needed_curve(bridge, make, batch, fc.curve_dense, fc.curve_candidates)
            )
    return results, repl


def transcoder_runs(cfg: RunConfig, run_dir: Path) -> dict[str, Path]:
    """The run folders whose features stage scored a transcoder: the run's own, and the PLT
    sub-run ``<run>/plt`` of the plt stage (``clt_bench.plt.stage``) when it finished."""
    runs: dict[str, Path] = {cfg.clt.kind: Path(run_dir)}
    sub = Path(run_dir) / "plt"
    if cfg.clt.kind != "plt" and (sub / "features" / "ranking.json").is_file():
        runs["plt"] = sub
    return runs


Measures = list[tuple[str, dict[str, Any]]]  # (measure, column -> value) rows of a table
RowCell = Callable[[dict[str, Any], str], Any]  # (a unit kind's row, key) -> its table cell


def transcoder_table(
    cfg: RunConfig,
    run_dir: Path,
    overlap: dict[str, list[dict[str, Any]]],
    table: list[dict[str, Any]],
    repl: dict[str, Any],
) -> list[dict[str, Any]]:
    """CLT vs PLT vs MLP neurons, one row per measure (same prompts, circuit, definitions)."""
    runs = transcoder_runs(cfg, run_dir)
    cols = {kind: f"{kind}_features" for kind in runs} | {"neurons": "mlp_neurons"}
    measures = [
        *_units_measures({r["unit_kind"]: r for r in table}, cols, repl),
        *_circuit_measures(overlap),
        *_transcoder_measures(runs),
    ]
    return [{"measure": m, **{c: values.get(c, "") for c in cols}} for m, values in measures]


def _units_measures(
    units: dict[str, dict[str, Any]], cols: dict[str, str], repl: dict[str, Any]
) -> Measures:
    """Units needed per column (of unit kind ``cols[column]``), their PDs, the replacement PD."""
    clean = {c: units.get(u, {}) for c, u in cols.items()}
    # the error term corrupted too (neurons have none: the same curve as with it clean)
    corr = {
        c: units.get(u if u == "mlp_neurons" else f"{u}_error_corrupted", {})
        for c, u in cols.items()
    }
    per_fraction: list[tuple[str, dict[str, dict[str, Any]], RowCell]] = [
        ("units for {} % of PD (held-out prompts)", clean, lambda r, k: r.get(k, "")),
        (
            "units for {} % of PD, 95 % CI (bootstrap over prompts)",
            clean,
            lambda r, k: _ci_cell(r.get(f"{k}_ci")),
        ),
        ("units for {} % of PD, error term corrupted [95 % CI]", corr, _k_ci_cell),
    ]
    out: Measures = []
    for label, rows, cell in per_fraction:
        for p in (int(f * 100) for f in FRACTIONS):
            out.append((label.format(p), {c: cell(r, f"k_{p}") for c, r in rows.items()}))
    for label, rows, key in (
        ("PD_0 (every unit corrupted, error term clean)", clean, "pd_0"),
        ("PD_0 (every unit and the error term corrupted)", corr, "pd_0"),
        ("PD with every unit clean, error term corrupted", corr, "pd_all"),
    ):
        out.append((label, {c: r.get(key, "") for c, r in rows.items()}))
    ratio = {c: repl[u]["replacement_pd_ratio"] for c, u in cols.items() if u in repl}
    return [*out, ("replacement PD / model PD", ratio)]


def _circuit_measures(overlap: dict[str, list[dict[str, Any]]]) -> Measures:
    """Each transcoder's top features against its primary circuit."""
    primary = {k: (ov[0] if ov else {}) for k, ov in overlap.items()}
    circuit = next(iter(primary.values()), {}).get("circuit", "-")
    return [
        (
            f"top-feature influence inside the circuit ({circuit})",
            {k: p.get("influence_share", "") for k, p in primary.items()},
        ),
        ("circuit MLP node recall", {k: p.get("mlp_recall", "") for k, p in primary.items()}),
    ]


def _transcoder_measures(runs: dict[str, Path]) -> Measures:
    """Each transcoder's reconstruction and its feature labels (only labels some run found, or
    that some run cannot test)."""
    out: Measures = [
        (label, {k: stage_summary(r, "clt").get(key, "") for k, r in runs.items()})
        for key, label in (("nmse", "NMSE (held out)"), ("l0", "L0 (all layers)"))
    ]
    feats = {k: stage_summary(r, "features") for k, r in runs.items()}
    for scope, suffix in (("top-K by influence", ""), ("all active features", ALL_ACTIVE)):
        for lab in LABELS:
            key = label_key(lab) + suffix
            untestable = {k for k, f in feats.items() if lab in f.get("not_testable", [])}
            if any(f.get(key) for f in feats.values()) or untestable:
                values = {
                    k: "not testable on this model" if k in untestable else f.get(key, "")
                    for k, f in feats.items()
                }
                out.append((f"labels ({scope}): {lab}", values))
    return out


def _ci_cell(ci: Any) -> str:
    if not ci:
        return ""
    lo, hi = (math.inf if v is None else v for v in ci)
    return f"[{_k(lo)}, {_k(hi)}]"


def _k_ci_cell(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return ""
    k = row[key]
    return f"{'never' if k is None else k} {_ci_cell(row.get(f'{key}_ci'))}"


def units_rows(results: list[UnitsResult]) -> list[dict[str, Any]]:
    return [
        {"unit_kind": r.kind, "k": k, "prob_diff": float(p), "normalized": float(v)}
        for r in results
        for k, p, v in zip(r.ks, r.prob_diff, r.normalized, strict=True)
    ]


def _k(v: float) -> str:
    return "never" if math.isinf(v) else str(int(v))


def units_table(
    results: list[UnitsResult], n_boot: int, seed: int
) -> tuple[list[dict[str, Any]], str]:
    """One row per unit kind: k for each fraction with its bootstrap interval, PD_0, PD_clean."""
    rows, lines = [], []
    for r in results:
        ci = bootstrap_needed(r.ks, r.pd, r.clean, FRACTIONS, n_boot, seed)
        row: dict[str, Any] = {
            "unit_kind": r.kind,
            "n_units": r.n_units,
            "pd_0": float(r.prob_diff[0]),
            "pd_all": float(r.prob_diff[-1]),
            "pd_clean": float(r.clean.mean()),
        }
        cells = [r.kind, str(r.n_units), f"{row['pd_0']:.3f}", f"{row['pd_clean']:.3f}"]
        for f in FRACTIONS:
            row[f"k_{int(f * 100)}"], row[f"k_{int(f * 100)}_ci"] = r.needed(f), list(ci[f])
            cells.append(_k_ci_cell(row, f"k_{int(f * 100)}"))
        rows.append(row)
        lines.append(cells)
    head = ["unit kind", "units", "PD_0", "PD_clean"]
    head += [f"k for {int(f * 100)}% [95% CI]" for f in FRACTIONS]
    text = (
        "# Units needed\n\n"
        + markdown_table(head, lines)
        + "\n\n"
        + UNITS_DEFINITION
        + f" Bootstrap: {n_boot} resamples, seed {seed}.\n"
    )
    return rows, text


def _share_cell(row: dict[str, Any], key: str) -> str:
    v, ci = row.get(key), row.get(f"{key}_ci")
    if v is None or not math.isfinite(v):
        return ""
    inside = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and all(map(math.isfinite, ci)) else ""
    return f"{v:.3f}{inside}"


def ground_truth_rows(
    cfg: RunConfig,
    run_dir: Path,
    probe: dict[str, Any],
    cmp: dict[str, Any],
    shares: dict[str, Any],
    names: list[str],
) -> list[dict[str, Any]]:
    """CLT vs PLT vs MLP neurons against the planted circuit, one row per measure (the report's
    table): the YY probe, the comparator's effect explained, where the units act (one estimate
    for every kind) and, for the transcoders, where their graph influence lies."""
    cols = {"clt": f"{cfg.clt.kind}_features", "plt": "plt_features", "neuron": "mlp_neurons"}
    cols = {k: v for k, v in cols.items() if k in names}
    rows: list[dict[str, Any]] = []

    def add(measure: str, values: dict[str, Any]) -> None:
        rows.append({"measure": measure, **{cols[k]: values.get(k, "") for k in cols}})

    def probe_of(k: str) -> dict[str, Any]:
        p = probe.get(cols[k])
        return p if isinstance(p, dict) else {}

    add("YY probe held-out R^2 (YY-position units)", {k: probe_of(k).get("r2", "") for k in cols})
    add(
        "YY probe: share within +-5 years",
        {k: probe_of(k).get("within_tolerance", "") for k in cols},
    )
    for top in (5, 20):
        add(
            f"comparator effect explained by the top {top} END units",
            {k: cmp[k]["explained"].get(top, "") for k in cols},
        )
    add("END units for 80 % of the comparator's effect", {k: cmp[k]["units_80"] for k in cols})
    where = (("YY", "at YY"), ("END", "at END"), ("planted_sites", "at planted MLP sites"))
    for key, label in where:
        add(f"effect share {label} [95 % CI]", {k: _share_cell(shares[k], key) for k in cols})
    runs = transcoder_runs(cfg, run_dir)
    graph = {k: stage_summary(runs[k], "graphs") for k in ("clt", "plt") if k in runs}
    graph = {("clt" if k == cfg.clt.kind else k): v for k, v in graph.items()}
    for key, label in (("yy", "at YY"), ("end", "at END"), ("planted_sites", "at planted sites")):
        add(
            f"graph influence share {label} (task prompts; no graph for neurons)",
            {k: g.get(f"influence_share_{key}_task_prompts", "") for k, g in graph.items()},
        )
    return rows


def ground_truth_probe(
    cfg: RunConfig,
    loaded: LoadedModel,
    run_dir: Path,
    batch: TaskBatch,
    out: Path,
    per_prompt: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """On a model with a planted circuit: the YY probe of every transcoder and of MLP neurons
    (``baseline.ground_truth``; on the discovery set, as the probe needs more prompts than the
    units curves) and the share of the planted comparator's effect their top units at END explain
    (``compare.comparator``, on ``batch``), written to compare/ground_truth.json, and where each
    kind acts (``compare.effect_shares``; all of it in compare/ground_truth.csv, the per-prompt
    shares added to ``per_prompt``); {} for other models."""
    truth = known_circuit(loaded.name)
    if truth is None:
        return {}
    tcs = load_transcoders(cfg, run_dir, loaded.device)
    # the whole discovery set (490 prompts, YY balanced): enough rows for a 97-value probe
    probe = yy_probe_scores(loaded.bridge, tcs, load_task_batch(cfg, loaded, "discovery"), truth)
    units: dict[str, Any] = {"neuron": None, **tcs}  # keys: "neuron", "clt", "plt"
    cmp = comparator_explained(
        loaded.bridge, units, batch, truth, cfg.features.curve_candidates, cfg.features.curve_dense
    )
    shares = _effect_shares(cfg, loaded, units, batch, truth)
    write_json(
        out / "ground_truth.json",
        json_safe(
            {
                "truth": truth.name,
                "yy_probe": probe,
                "comparator_explained": cmp,
                "effect_shares": {k: v for k, v in shares.items() if k != "per_prompt"},
            }
        ),
    )
    grids = {}
    for kind, r in transcoder_runs(cfg, run_dir).items():
        rk = load_ranking(r)
        grids[kind.upper()] = influence_grid(ranked_sites(rk), rk["influence"], loaded.n_layers)
    ground_truth_grid(
        grids, truth, load_run_circuit(run_dir), out / "ground_truth_grid.png", loaded.name
    )
    write_text(
        out / "ground_truth.csv",
        csv_text(ground_truth_rows(cfg, run_dir, probe, cmp, shares, list(units))),
    )
    per_prompt.update(
        {
            f"effect_share_{key.lower()}_{name}": torch.from_numpy(v)
            for name, per in shares["per_prompt"].items()
            for key, v in per.items()
        }
    )
    return _ground_truth_metrics(cfg, probe, cmp, shares, list(units))


def load_transcoders(
    cfg: RunConfig, run_dir: Path, device: torch.device | str
) -> dict[str, CrossLayerTranscoder]:
    """Every transcoder of ``transcoder_runs``, by kind."""
    return {k: load_run_clt(r, device=device) for k, r in transcoder_runs(cfg, run_dir).items()}


def _effect_shares(
    cfg: RunConfig,
    loaded: LoadedModel,
    units: dict[str, CrossLayerTranscoder | None],
    batch: TaskBatch,
    truth: Circuit,
) -> dict[str, Any]:
    """``compare.effect_shares`` of each unit kind (None: MLP neurons)."""
    dev = model_device(loaded.bridge)
    clean, corrupted = batch.clean.to(dev), batch.corrupted.to(dev)
    unit_sets = {
        name: neuron_units(loaded.bridge, clean, corrupted)
        if tc is None
        else feature_units(loaded.bridge, tc, clean, corrupted, f"{name}_features")
        for name, tc in units.items()
    }
    fc = cfg.features
    return effect_shares(loaded.bridge, unit_sets, batch, truth, fc.curve_bootstrap, fc.curve_seed)


def _ground_truth_metrics(
    cfg: RunConfig,
    probe: dict[str, Any],
    cmp: dict[str, Any],
    shares: dict[str, Any],
    names: list[str],
) -> dict[str, Any]:
    """The ground-truth headline numbers, flat, per unit kind in ``names``."""
    prefix = {"mlp_neurons": "neuron", f"{cfg.clt.kind}_features": "clt", "plt_features": "plt"}
    flat: dict[str, Any] = {}
    for kind, scores in probe.items():
        if isinstance(scores, dict) and kind in prefix:
            flat[f"yy_probe_r2_{prefix[kind]}"] = scores["r2"]
            flat[f"yy_probe_within5_{prefix[kind]}"] = scores["within_tolerance"]
    for name in names:
        flat[f"cmp_explained_top5_{name}"] = cmp[name]["explained"].get(5, math.nan)
        flat[f"cmp_explained_top20_{name}"] = cmp[name]["explained"].get(20, math.nan)
        flat[f"cmp_units_80_{name}"] = cmp[name]["units_80"]
        for key in SHARES:
            flat[f"effect_share_{key.lower()}_{name}"] = shares[name][key]
    return flat


def ranked_sites(rank: FeatureRanking) -> list[FeatureSite]:
    """The ranked features as (layer, position) sites."""
    return [
        FeatureSite(int(a), p)
        for (a, _), p in zip(rank["features"], rank["positions"], strict=True)
    ]


def write_overlaps(
    cfg: RunConfig, run_dir: Path, rank: FeatureRanking, circuits: list[Circuit], out: Path
) -> dict[str, list[dict[str, Any]]]:
    """Each transcoder's features vs each circuit: ``overlap.csv`` (all) and ``overlap.md`` (the
    run's own transcoder); returns transcoder kind -> rows, the run's own first."""
    overlaps: dict[str, list[dict[str, Any]]] = {}
    for kind, sub in transcoder_runs(cfg, run_dir).items():  # the run's own first
        r = rank if kind == cfg.clt.kind else load_ranking(sub)
        overlaps[kind] = overlap_rows(ranked_sites(r), r["write_effects"], circuits)
    write_text(
        out / "overlap.csv",
        csv_text([{"transcoder": k, **row} for k, rows in overlaps.items() for row in rows]),
    )
    cols = ["circuit", "n_nodes", "influence_share", "all_precision", "all_recall"]
    cols += ["mlp_precision", "mlp_recall", "mlp_f1"]
    write_text(out / "overlap.md", _md(overlaps[cfg.clt.kind], cols))
    return overlaps


def family_generalisation(
    cfg: RunConfig,
    loaded: LoadedModel,
    run_dir: Path,
    rank: FeatureRanking,
    batch: TaskBatch,
    out: Path,
) -> dict[str, Any]:
    """How much of each top feature's PD contribution each prompt family keeps (written to
    ``out``); the median, or why it is undefined."""
    fc = cfg.features
    fam_rows, kept = generalisation(
        cfg,
        loaded,
        load_transcoders(cfg, run_dir, loaded.device),
        load_run_circuit(run_dir),
        [(int(a), int(b)) for a, b in rank["features"][: fc.family_features]],
        cfg.task.family_n,
        batch,
        rank.get("pd_contributions"),
    )
    write_generalisation(
        fam_rows,
        kept,
        out,
        f"{loaded.name}: share of each top feature's PD contribution kept on each family",
    )
    fam_summary: dict[str, Any] = {}
    others = [c for c in kept.columns if c != batch.template]
    fam_summary["families_median_feature_pd_kept"] = (
        float(np.nanmedian(kept.to_numpy())) if kept.size and others else None
    )
    if kept.size and not others:  # one template: it would be compared with itself
        fam_summary["families_undefined_reason"] = (
            f"the task has no template or family other than the run's own "
            f"('{batch.template}'), so the median would compare it with itself"
        )
    return fam_summary


def compare_summary(
    cfg: RunConfig,
    overlaps: dict[str, list[dict[str, Any]]],
    by_kind: dict[str, dict[str, Any]],
    repl: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The compare stage's headline numbers: overlap with the primary circuit, replacement PD,
    units needed per unit kind (with their intervals under ``units_ci``), the PLT's beside."""
    ov = overlaps[cfg.clt.kind]
    main = repl[f"{cfg.clt.kind}_features"]
    primary = ov[0] if ov else {}
    summary: dict[str, Any] = {
        "circuit": primary.get("circuit"),
        "influence_share_in_circuit": primary.get("influence_share", math.nan),
        "node_precision_mlp": primary.get("mlp_precision", math.nan),
        "node_recall_mlp": primary.get("mlp_recall", math.nan),
        "node_precision_all": primary.get("all_precision", math.nan),
        "node_recall_all": primary.get("all_recall", math.nan),
        "model_prob_diff": main["model_prob_diff"],
        "replacement_prob_diff": main["replacement_prob_diff"],
        "replacement_pd_ratio": main["replacement_pd_ratio"],
    }
    why = ratio_undefined_reason(main["model_prob_diff"])
    if why:  # a ratio to a non-positive model PD (e.g. an exact task the model does not do)
        summary["replacement_pd_ratio"] = None
        summary["replacement_pd_ratio_undefined_reason"] = why
    prefix = {"mlp_neurons": "neuron", f"{cfg.clt.kind}_features": "clt", "plt_features": "plt"}
    units_ci: dict[str, list[float]] = {}
    for kind, row in by_kind.items():
        base = kind.removesuffix("_error_corrupted")
        variant = "_error_corrupted" if base != kind else ""
        for f in FRACTIONS:
            name = f"{prefix[base]}_units_{int(f * 100)}{variant}"
            summary[name] = row[f"k_{int(f * 100)}"]
            units_ci[name] = row[f"k_{int(f * 100)}_ci"]
        if variant:
            summary[f"{prefix[base]}_units_pd_0{variant}"] = row["pd_0"]
            summary[f"{prefix[base]}_units_pd_all{variant}"] = row["pd_all"]
    # nested, so not a headline number of its own: the report sets each beside its k
    summary["units_ci"] = units_ci
    if "plt_features" in repl and cfg.clt.kind != "plt":
        summary["plt_replacement_prob_diff"] = repl["plt_features"]["replacement_prob_diff"]
        plt_primary = overlaps["plt"][0] if overlaps.get("plt") else {}
        summary["plt_influence_share_in_circuit"] = plt_primary.get("influence_share", math.nan)
        summary["plt_node_recall_mlp"] = plt_primary.get("mlp_recall", math.nan)
    return summary


def run_compare_stage(
    cfg: RunConfig, loaded: LoadedModel, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    out = run_dir / "compare"
    fc = cfg.features
    rank = load_ranking(run_dir)
    batch = task_prompts(cfg, loaded)
    circuits = circuits_to_compare(run_dir, loaded.name)
    overlaps = write_overlaps(cfg, run_dir, rank, circuits, out)
    ov = overlaps[cfg.clt.kind]
    results, repl = units_results(cfg, loaded, run_dir, batch)
    # the per-prompt values behind the held-out means (compare/per_prompt.safetensors)
    per = {kind: r.pop("per_prompt") for kind, r in repl.items()}
    per_prompt = dict(per[f"{cfg.clt.kind}_features"])  # model_ and replacement_prob_diff
    if "plt_features" in per and cfg.clt.kind != "plt":
        per_prompt["plt_replacement_prob_diff"] = per["plt_features"]["replacement_prob_diff"]
    write_text(out / "units_needed.csv", csv_text(units_rows(results)))
    plot_curves(
        results,
        out / "units_needed.png",
        f"{loaded.name}: PD recovered with the top-k units (held-out prompts)",
    )
    table, text = units_table(results, fc.curve_bootstrap, fc.curve_seed)
    write_text(out / "units_table.md", text)
    by_kind = {r["unit_kind"]: r for r in table}
    fam_summary: dict[str, Any] = {}
    if cfg.task.family_n > 0 and fc.family_features > 0:  # generalisation across prompt families
        fam_summary = family_generalisation(cfg, loaded, run_dir, rank, batch, out)
    side = transcoder_table(cfg, run_dir, overlaps, table, repl)
    write_text(out / "transcoders.csv", csv_text(side))
    write_text(
        out / "transcoders.md",
        "# CLT vs PLT vs MLP neurons\n\nSame prompts, circuit and "
        "definitions for every column (docs/methods.md); transcoders matched in features "
        "per layer (the [plt] section), not in L0.\n\n" + _md(side, list(side[0])) + "\n",
    )
    summary = compare_summary(cfg, overlaps, by_kind, repl)
    summary.update(fam_summary)
    summary.update(ground_truth_probe(cfg, loaded, run_dir, batch, out, per_prompt))
    save_tensors(out / "per_prompt.safetensors", per_prompt)
    write_json(
        out / "metrics.json",
        json_safe(
            {
                **summary,
                "overlap": ov,
                "units_table": table,
                "units_definition": UNITS_DEFINITION,
                "units_top": {r.kind: [list(n) for n in r.names] for r in results},
                "units_split": {
                    "ranking": "even prompt indices",
                    "evaluation": "odd prompt indices",
                },
                "replacement": repl,
                "n_prompts": len(batch),
                "seconds": round(time.perf_counter() - t0, 2),
                **run_metadata(config=fc, seeds={"task": batch.seed, "bootstrap": fc.curve_seed}),
            }
        ),
    )
    log.info("compare stage wrote %s", out)
    safe: dict[str, Any] = json_safe(summary)
    return safe
