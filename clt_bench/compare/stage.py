"""The compare stage: the selected CLT features against the baseline circuit.

Reads ``<run>/features/ranking.json`` (the top-K features, their influence and write split),
the CLT (``<run>/clt``; a PLT in ``<run>/plt`` adds a CLT-vs-PLT row), the baseline's
``circuit.json`` and ``units_needed.csv`` (the neuron curve); for a GPT-2-shaped model also the
published circuits of ``baselines/``. Writes ``<run>/compare/``:

- overlap.csv / overlap.md: per circuit, the share of the top-K influence written into its MLP
  cells and node precision/recall/F1 at layer x position granularity (all nodes; MLPs only);
- units_needed.csv (``units, k, prob_diff, fraction_of_model_pd``; units = clt_features | neurons),
  units_needed.png, units_table.md ("units needed for 80% / 90% of PD");
- metrics.json (with the model's and the replacement model's PD).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from clt_bench.baseline.circuits import PUBLISHED, Circuit, load_circuit
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.compare.curve import replacement_pd, units_curve, units_needed
from clt_bench.compare.overlap import FeatureSite, gpt2_shaped, influence_share, node_overlap
from clt_bench.config import RunConfig
from clt_bench.errors import UserError
from clt_bench.features.attribution import influence_ranking, task_attributions
from clt_bench.features.stage import (
    json_safe,
    load_run_circuit,
    load_run_clt,
    read_ranking,
    task_prompts,
)
from clt_bench.io import run_metadata, write_json, write_text
from clt_bench.models import LoadedModel
from clt_bench.plots import save_figure
from clt_bench.task.dataset import TaskBatch

log = logging.getLogger(__name__)
FRACTIONS = (0.8, 0.9)


def read_neuron_curve(run_dir: Path) -> list[dict[str, float | int]]:
    """The baseline's neuron curve (``k, prob_diff, fraction_of_model_pd``); [] if absent."""
    path = Path(run_dir) / "baseline" / "units_needed.csv"
    if not path.is_file():
        return []
    try:
        with path.open(encoding="utf-8") as fh:
            return [{"k": int(r["k"]), "prob_diff": float(r["prob_diff"]),
                     "fraction_of_model_pd": float(r["fraction_of_model_pd"])}
                    for r in csv.DictReader(fh)]
    except (KeyError, ValueError) as err:
        raise UserError(f"{path} is not a units-needed CSV (k, prob_diff, "
                        f"fraction_of_model_pd).") from err


def circuits_to_compare(run_dir: Path, n_layers: int, n_heads: int) -> list[Circuit]:
    """The discovered/configured baseline circuit, plus the published ones for GPT-2 shapes."""
    out = []
    own = load_run_circuit(run_dir)
    if own is not None:
        out.append(own)
    if gpt2_shaped(n_layers, n_heads):
        names = {c.name for c in out}
        out.extend(load_circuit(n) for n in PUBLISHED if n not in names)
    return out


def overlap_rows(sites: list[FeatureSite], write: list[list[float]], circuits: list[Circuit]
                 ) -> list[dict[str, Any]]:
    rows = []
    for c in circuits:
        rows.append({"circuit": c.name, "n_nodes": len(c.nodes),
                     "influence_share": influence_share(sites, write, c) if sites else math.nan,
                     **node_overlap(sites, c)})
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()})
    return buf.getvalue()


def _md(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def f(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(f(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list[dict[str, float | int]]], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, rows in curves.items():
        pts = [(int(r["k"]), float(r["fraction_of_model_pd"])) for r in rows if int(r["k"]) >= 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
    for frac in FRACTIONS:
        ax.axhline(frac, color="grey", lw=0.7, ls="--")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("units kept clean (k)")
    ax.set_ylabel("PD / model PD")
    ax.set_title(title, fontsize=10)
    ax.legend()
    return save_figure(fig, path)


def clt_summary(loaded: LoadedModel, clt: CrossLayerTranscoder, batch: TaskBatch,
                ranking: list[tuple[int, int]], background: str, dense: int
                ) -> tuple[dict[str, Any], list[dict[str, float | int]]]:
    """Replacement PD and the units-needed curve of one transcoder."""
    curve = units_curve(loaded.bridge, clt, batch, ranking, background=background, dense=dense)
    out: dict[str, Any] = dict(replacement_pd(loaded.bridge, clt, batch))
    for frac in FRACTIONS:
        out[f"units_{int(frac * 100)}"] = units_needed(curve, frac)
    out["all_features_fraction"] = float(curve[-1]["fraction_of_model_pd"])
    out["k0_fraction"] = float(curve[0]["fraction_of_model_pd"])
    return out, curve


def run_compare_stage(cfg: RunConfig, loaded: LoadedModel, run_dir: Path, progress: bool = True
                      ) -> dict[str, Any]:
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    out = run_dir / "compare"
    fc = cfg.features
    rank = read_ranking(run_dir)
    ranking = [(int(a), int(b)) for a, b in rank["extended"]]
    sites = [FeatureSite(int(a), p) for (a, _), p in zip(rank["features"], rank["positions"],
                                                          strict=True)]
    clt = load_run_clt(run_dir, device=loaded.device)
    batch = task_prompts(cfg, loaded)
    circuits = circuits_to_compare(run_dir, loaded.n_layers, int(loaded.bridge.cfg.n_heads))
    ov = overlap_rows(sites, rank["write_effects"], circuits)
    write_text(out / "overlap.csv", _csv(ov))
    write_text(out / "overlap.md", _md(ov, ["circuit", "n_nodes", "influence_share",
                                            "all_precision", "all_recall", "mlp_precision",
                                            "mlp_recall", "mlp_f1"]))
    main, curve = clt_summary(loaded, clt, batch, ranking, fc.curve_background, fc.curve_dense)
    curves = {f"CLT features ({cfg.clt.kind})": curve}
    units = [{"units": "clt_features", **r} for r in curve]
    neurons = read_neuron_curve(run_dir)
    if neurons:
        curves["baseline neurons"] = neurons
        units += [{"units": "neurons", **r} for r in neurons]
    table = [{"units": f"{cfg.clt.kind.upper()} features (top by influence)",
              **{f"for {int(f * 100)}% of PD": main[f"units_{int(f * 100)}"] for f in FRACTIONS},
              "PD with all": main["all_features_fraction"]}]
    if neurons:
        table.append({"units": "baseline neurons",
                      **{f"for {int(f * 100)}% of PD": units_needed(neurons, f)
                         for f in FRACTIONS},
                      "PD with all": float(neurons[-1]["fraction_of_model_pd"])})
    plt_row: dict[str, Any] | None = None
    if (run_dir / "plt" / "config.yaml").is_file():
        plt_clt = load_run_clt(run_dir, "plt", device=loaded.device)
        att = task_attributions(loaded.bridge, plt_clt, batch, fc.prompts_per_pass,
                                progress=progress)
        keys, _ = influence_ranking(att)
        plt_rank = [att.split_key(int(k)) for k in keys[: 4 * fc.top_k]]
        plt_row, plt_curve = clt_summary(loaded, plt_clt, batch, plt_rank, fc.curve_background,
                                         fc.curve_dense)
        curves["PLT features"] = plt_curve
        units += [{"units": "plt_features", **r} for r in plt_curve]
        table.append({"units": "PLT features (top by influence)",
                      **{f"for {int(f * 100)}% of PD": plt_row[f"units_{int(f * 100)}"]
                         for f in FRACTIONS},
                      "PD with all": plt_row["all_features_fraction"]})
    write_text(out / "units_needed.csv", _csv(units))
    plot_curves(curves, out / "units_needed.png",
                f"{loaded.name}: PD recovered with the top-k units ({fc.curve_background} "
                f"background)")
    cols = ["units", *[f"for {int(f * 100)}% of PD" for f in FRACTIONS], "PD with all"]
    write_text(out / "units_table.md", "# Units needed\n\n" + _md(table, cols))
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
        "clt_units_80": main["units_80"], "clt_units_90": main["units_90"],
        "clt_all_features_fraction": main["all_features_fraction"],
        "neuron_units_80": units_needed(neurons, 0.8) if neurons else None,
        "neuron_units_90": units_needed(neurons, 0.9) if neurons else None,
    }
    if plt_row is not None:
        summary.update({"plt_replacement_prob_diff": plt_row["replacement_prob_diff"],
                        "plt_units_80": plt_row["units_80"], "plt_units_90": plt_row["units_90"]})
    write_json(out / "metrics.json", json_safe({
        **summary, "overlap": ov, "units_table": table, "curve_background": fc.curve_background,
        "n_prompts": len(batch), "seconds": round(time.perf_counter() - t0, 2),
        **run_metadata(config=fc, seeds={"task": batch.seed}),
    }))
    log.info("compare stage wrote %s", out)
    return json_safe(summary)


def pipeline_stage(ctx: Any) -> dict[str, Any]:
    """Pipeline adapter (clt_bench.pipeline): the compare stage's headline numbers."""
    return run_compare_stage(ctx.cfg, ctx.model, ctx.run_dir)
