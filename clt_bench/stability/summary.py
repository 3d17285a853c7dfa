"""``<run>/stability/``: how much of a run's feature picture survives another CLT seed.

Inputs: finished runs that differ only in the CLT seed (the first is the reference seed), each
with ``clt/`` and ``features/`` (features.csv, heatmaps.safetensors). A top-K feature of seed s
is **stable** when its decoder-direction match (``match``) in every other seed has cosine >=
``threshold`` (0.9 by default; stated in the outputs). The files written: docs/architecture.md
("Sub-runs"); the spread over seeds they give is one over transcoder seeds, not a bootstrap
over prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from clt_bench.artifacts import stage_summary
from clt_bench.clt.circuit_tracer_io import load_clt
from clt_bench.errors import UserError
from clt_bench.features.shape_scores import LABELS
from clt_bench.io import json_safe, load_tensors, markdown_table, write_json, write_text
from clt_bench.plots import caption_below, mark_caption, save_figure, yy_zz_heatmap
from clt_bench.report.headline import fmt3g
from clt_bench.stability.match import LayerMatch, match_transcoders

# stages whose numbers depend on the CLT seed (their summaries are compared across seeds)
SEED_STAGES = ("clt", "graphs", "features", "compare")


@dataclass
class SeedRun:
    seed: int
    run_dir: Path
    features: pd.DataFrame  # features.csv (rank order)
    heatmaps: np.ndarray  # [K, 97, 100]
    answers: list[int] | None = None  # an exact task's answer per heatmap row (else None)

    @classmethod
    def load(cls, seed: int, run_dir: Path) -> SeedRun:
        fdir = Path(run_dir) / "features"
        if not (fdir / "features.csv").is_file():
            raise UserError(f"no features stage output in {run_dir}; run the pipeline first.")
        df = pd.read_csv(fdir / "features.csv")
        tensors = load_tensors(fdir / "heatmaps.safetensors")
        answers = tensors["answers"].tolist() if "answers" in tensors else None
        heat = tensors["heatmaps"].numpy()
        return cls(seed=seed, run_dir=Path(run_dir), features=df, heatmaps=heat, answers=answers)

    def summaries(self) -> dict[str, Any]:
        return {
            f"{stage}.{k}": float(v)
            for stage in SEED_STAGES
            for k, v in stage_summary(self.run_dir, stage).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }


def _matches(runs: list[SeedRun]) -> dict[tuple[int, int], list[LayerMatch]]:
    clts = {r.seed: load_clt(r.run_dir / "clt") for r in runs}
    return {
        (a.seed, b.seed): match_transcoders(clts[a.seed], clts[b.seed])
        for a in runs
        for b in runs
        if a.seed != b.seed
    }


def stable_table(
    runs: list[SeedRun], matches: dict[tuple[int, int], list[LayerMatch]], threshold: float
) -> pd.DataFrame:
    """One row per (seed, top-K feature) with its match in every other seed and ``stable``."""
    rows = []
    for r in runs:
        for _, f in r.features.iterrows():
            layer, fid = int(f["layer"]), int(f["feature_id"])
            row: dict[str, Any] = {
                "seed": r.seed,
                "rank": int(f["rank"]),
                "feature": f["feature"],
                "layer": layer,
                "feature_id": fid,
                "label": f["label"],
                "influence": float(f["influence"]),
            }
            cosines = []
            for o in runs:
                if o.seed == r.seed:
                    continue
                m = matches[(r.seed, o.seed)][layer]
                partner, cos = int(m.partner[fid]), float(m.cosine[fid])
                hit = o.features[
                    (o.features["layer"] == layer) & (o.features["feature_id"] == partner)
                ]
                row[f"match_seed{o.seed}"] = f"L{layer}/{partner}" if partner >= 0 else ""
                row[f"cosine_seed{o.seed}"] = cos
                row[f"rank_seed{o.seed}"] = int(hit["rank"].iloc[0]) if len(hit) else -1
                row[f"label_seed{o.seed}"] = str(hit["label"].iloc[0]) if len(hit) else ""
                cosines.append(cos if math.isfinite(cos) else -1.0)
            row["min_cosine"] = min(cosines) if cosines else float("nan")
            row["stable"] = bool(cosines) and min(cosines) >= threshold
            rows.append(row)
    return pd.DataFrame(rows)


def label_table(runs: list[SeedRun], stable: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for lab in LABELS:
        counts = [int((r.features["label"] == lab).sum()) for r in runs]
        n_stable = [
            int(((stable["seed"] == r.seed) & (stable["label"] == lab) & stable["stable"]).sum())
            for r in runs
        ]
        if not any(counts):
            continue
        rows.append(
            {
                "label": lab,
                **{f"seed{r.seed}": c for r, c in zip(runs, counts, strict=True)},
                "mean": float(np.mean(counts)),
                "sd": _sd(counts),
                "stable_mean": float(np.mean(n_stable)),
                "stable_sd": _sd(n_stable),
            }
        )
    return pd.DataFrame(rows)


def seed_table(runs: list[SeedRun], stable: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in runs:
        s = stable[stable["seed"] == r.seed]
        total = float(s["influence"].sum())
        rows.append(
            {
                "seed": r.seed,
                "n_top": len(s),
                "n_stable": int(s["stable"].sum()),
                "stable_influence_share": float(s.loc[s["stable"], "influence"].sum()) / total
                if total
                else float("nan"),
                "median_match_cosine": float(s["min_cosine"].median()) if len(s) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def metric_table(runs: list[SeedRun]) -> pd.DataFrame:
    per = [r.summaries() for r in runs]
    keys = sorted(set().union(*per))
    rows = []
    for k in keys:
        vals = [p.get(k, float("nan")) for p in per]
        finite = [v for v in vals if math.isfinite(v)]
        rows.append(
            {
                "metric": k,
                "mean": float(np.mean(finite)) if finite else float("nan"),
                "sd": _sd(finite),
                "n_seeds": len(finite),
                **{f"seed{r.seed}": v for r, v in zip(runs, vals, strict=True)},
            }
        )
    return pd.DataFrame(rows)


def _sd(values: list[float] | list[int]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def stable_heatmaps(
    runs: list[SeedRun], stable: pd.DataFrame, path: Path, n: int = 12
) -> Path | None:
    """Rows: the ``n`` most influential stable features of the reference seed; columns: seeds."""
    ref = runs[0]
    top = stable[(stable["seed"] == ref.seed) & stable["stable"]].sort_values("rank").head(n)
    if top.empty:
        return None
    fig, axes = plt.subplots(
        len(top), len(runs), figsize=(3.4 * len(runs), 2.9 * len(top)), squeeze=False
    )
    for i, (_, f) in enumerate(top.iterrows()):
        for j, r in enumerate(runs):
            ax = axes[i, j]
            rank = int(f["rank"]) if j == 0 else int(f[f"rank_seed{r.seed}"])
            name = f["feature"] if j == 0 else f[f"match_seed{r.seed}"]
            if rank < 1:
                ax.text(
                    0.5,
                    0.5,
                    f"seed {r.seed}: {name}\nnot in its top {len(r.features)}",
                    ha="center",
                    va="center",
                    fontsize=8,
                )
                ax.axis("off")
                continue
            label = r.features["label"].iloc[rank - 1]
            cos = "" if j == 0 else f", cos {f[f'cosine_seed{r.seed}']:.2f}"
            yy_zz_heatmap(
                np.nan_to_num(r.heatmaps[rank - 1]),
                path,
                f"seed {r.seed} #{rank} {name}{cos}\n{label}",
                cbar_label="",
                diverging=True,
                ax=ax,
                answers=r.answers,
            )
            ax.set_xlabel("")
            ax.set_ylabel("")
    fig.suptitle("Most influential stable features across CLT seeds (rows YY, columns ZZ)")
    fig.tight_layout()
    caption_below(fig, mark_caption(ref.answers))
    return save_figure(fig, path)


def write_stability(
    run_dirs: dict[int, Path], out: Path, threshold: float = 0.9, n_heatmaps: int = 12
) -> dict[str, Any]:
    """Compare finished runs that differ in the CLT seed; write ``out``; return the summary."""
    if len(run_dirs) < 2:
        raise UserError("stability needs at least two CLT seeds.")
    runs = [SeedRun.load(s, d) for s, d in run_dirs.items()]
    stable = stable_table(runs, _matches(runs), threshold)
    labels, seeds, metrics = label_table(runs, stable), seed_table(runs, stable), metric_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (
        ("stable_features", stable),
        ("labels", labels),
        ("seeds", seeds),
        ("metrics_over_seeds", metrics),
    ):
        write_text(out / f"{name}.csv", df.to_csv(index=False))
    fig = stable_heatmaps(runs, stable, out / "heatmaps_stable.png", n_heatmaps)
    gen = runs[0].run_dir / "compare" / "feature_generalisation.csv"
    if gen.is_file():  # the reference seed's top features across prompt families: stable ones
        ref = stable[stable["seed"] == runs[0].seed].set_index("feature")["stable"]
        table = pd.read_csv(gen)
        table = table[table["feature"].map(ref).fillna(False).astype(bool)]
        write_text(out / "feature_generalisation_stable.csv", table.to_csv(index=False))
    summary = {
        "seeds": [r.seed for r in runs],
        "threshold": threshold,
        "match": "one-to-one assignment of decoder directions per layer (max total cosine)",
        "n_top": int(len(runs[0].features)),
        "stable_mean": float(seeds["n_stable"].mean()),
        "stable_influence_share_mean": float(seeds["stable_influence_share"].mean()),
        "per_seed": seeds.to_dict(orient="records"),
        "labels": labels.to_dict(orient="records"),
        "metrics": metrics.to_dict(orient="records"),
        "heatmaps": fig.name if fig is not None else None,
    }
    write_json(out / "stability.json", json_safe(summary))
    write_text(out / "stability.md", stability_markdown(summary, labels, seeds))
    return summary


def stability_markdown(summary: dict[str, Any], labels: pd.DataFrame, seeds: pd.DataFrame) -> str:
    lines = [
        f"# Stability over CLT seeds {', '.join(map(str, summary['seeds']))}",
        "",
        f"A top-{summary['n_top']} feature is stable when its decoder-direction match in every "
        f"other seed has cosine >= {summary['threshold']} ({summary['match']}).",
        "",
        _md(seeds),
        "",
        _md(labels),
        "",
    ]
    return "\n".join(lines)


def _md(df: pd.DataFrame) -> str:
    """A pipe table (pandas' ``to_markdown`` needs the optional ``tabulate``)."""
    rows = ([fmt3g(v) for v in row] for row in df.itertuples(index=False))
    return markdown_table([str(c) for c in df.columns], rows)
