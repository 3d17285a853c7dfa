"""Does the picture generalise across prompt families? (``compare/families.csv`` and
``compare/feature_generalisation.csv``; docs/methods.md, "compare")

For every template and family of the task file (each with its own counterfactual and relation;
``clt_bench.task.families``), on ``task.family_n`` prompts: the model's PD and the run's circuit's
component-level faithfulness on the family, each transcoder's replacement PD ratio, and the share
of each top feature's first-order PD contribution (under the family's own relation) the family
keeps. A family is scored when its PD is the same quantity as the run's template's (``gt`` and
``lt`` are one quantity mirrored; an ``exact`` PD, p(answer) minus the largest other p, is
another): the others are listed with a note.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from clt_bench.baseline.circuits import Circuit
from clt_bench.baseline.faithfulness import patch_circuits, ratio_undefined_reason
from clt_bench.baseline.patching import PatchContext
from clt_bench.baseline.readout import metrics_of
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.compare.curve import replacement_pd
from clt_bench.config import RunConfig
from clt_bench.errors import UserError
from clt_bench.features.task_attributions import per_feature_sums, task_attributions
from clt_bench.io import write_text
from clt_bench.models import LoadedModel
from clt_bench.plots import save_figure  # (sets matplotlib's headless backend)
from clt_bench.task.dataset import TaskBatch, build_dataset
from clt_bench.task.families import FULL
from clt_bench.task.spec import load_task

log = logging.getLogger(__name__)


def family_batches(cfg: RunConfig, loaded: LoadedModel, n: int) -> dict[str, TaskBatch | str]:
    """Each template/family's prompts (balanced over YY, as in task/families.csv), or the reason
    it cannot be built."""
    spec = load_task(cfg.task.task)
    out: dict[str, TaskBatch | str] = {}
    for name in spec.all_templates():
        try:
            batch = build_dataset(
                spec, loaded.tokenizer, "discovery", name, n=max(n, FULL), seed=cfg.task.seed
            )
        except UserError as err:
            out[name] = str(err)
            continue
        if n < FULL:
            batch = batch.subset(np.linspace(0, FULL - 1, n).round().astype(int).tolist())
        out[name] = batch
    return out


def _other_quantity(family: str, template: str) -> str:
    """Why a family of another kind of relation than the run's template is not scored."""
    return (
        f"{family} relation: its PD is another quantity than the {template} PD of the run's "
        f"template (exact: p(answer) - the largest other p; gt/lt: the correct side's mass - "
        f"the other side's), so fractions of it are not comparable"
    )


def _contributions(
    loaded: LoadedModel, clt: CrossLayerTranscoder, batch: TaskBatch, keys: np.ndarray
) -> np.ndarray:
    att = task_attributions(
        loaded.bridge, clt, batch, heatmap_mode="direct", progress=False, direct_effects=False
    )
    return per_feature_sums(att, keys)["pd"]  # total effects only


def generalisation(
    cfg: RunConfig,
    loaded: LoadedModel,
    transcoders: dict[str, CrossLayerTranscoder],
    circuit: Circuit | None,
    features: list[tuple[int, int]],
    n: int,
    reference: TaskBatch,
    reference_pd: list[float] | None = None,
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """(one row per family, [features x families] fraction of PD contribution kept).

    ``reference_pd``: each feature's PD contribution on ``reference`` when the caller has it
    (the features stage's ``pd_contributions``, same prompts and attributions); else computed.
    """
    main = transcoders[cfg.clt.kind]
    F = main.spec.n_features
    keys = np.array([layer * F + fid for layer, fid in features], dtype=np.int64)
    if reference_pd is not None:  # one entry per ranked feature: ``features`` is a prefix
        ref = np.asarray(reference_pd[: len(keys)], dtype=np.float64)
    else:
        ref = _contributions(loaded, main, reference, keys) if len(keys) else np.zeros(0)
    rows: list[dict[str, Any]] = []
    kept: dict[str, np.ndarray] = {}
    for name, batch in family_batches(cfg, loaded, n).items():
        row: dict[str, Any] = {"family": name}
        if isinstance(batch, str):
            rows.append({**row, "note": batch})
            continue
        row.update(relation=batch.relation, n=len(batch))
        if (batch.relation == "exact") != (reference.relation == "exact"):
            rows.append({**row, "note": _other_quantity(batch.relation, reference.relation)})
            continue
        keep = cfg.activations.exclude_bos
        repl = {k: replacement_pd(loaded.bridge, t, batch, keep) for k, t in transcoders.items()}
        model_pd = next(iter(repl.values()))["model_prob_diff"] if repl else math.nan
        row["model_prob_diff"] = model_pd
        for kind, r in repl.items():
            row[f"{kind}_replacement_pd_ratio"] = r["replacement_pd_ratio"]
        if circuit is not None:
            ctx = PatchContext.build(loaded.bridge, batch, "clean", cfg.baseline.batch_size)
            circ = metrics_of(patch_circuits(ctx, [circuit], complement=True)[0], batch)
            row["circuit_prob_diff"] = circ["prob_diff"]
            row["faithfulness_components_ratio"] = (
                circ["prob_diff"] / model_pd if model_pd > 0 else math.nan
            )
        why = ratio_undefined_reason(model_pd)
        if why:
            row["note"] = f"ratios undefined: {why}"
        if len(keys):
            frac = _contributions(loaded, main, batch, keys) / np.where(ref == 0, np.nan, ref)
            kept[name] = frac
            row["median_feature_pd_kept"] = float(np.nanmedian(frac))
        rows.append(row)
    names = [f"L{layer}/{fid}" for layer, fid in features]
    table = pd.DataFrame(kept, index=names)
    return rows, table


def write_generalisation(
    rows: list[dict[str, Any]], table: pd.DataFrame, out: Path, title: str
) -> list[Path]:
    """``families.csv``, ``feature_generalisation.csv`` and the features x families heatmap."""
    paths = [
        write_text(out / "families.csv", pd.DataFrame(rows).to_csv(index=False)),
        write_text(out / "feature_generalisation.csv", table.to_csv(index_label="feature")),
    ]
    if table.size:
        fig, ax = plt.subplots(figsize=(1.0 + 0.5 * table.shape[1], 1.5 + 0.28 * table.shape[0]))
        sns.heatmap(
            table.clip(-1.5, 1.5),
            ax=ax,
            cmap="RdBu_r",
            vmin=-1.5,
            vmax=1.5,
            center=0,
            cbar_kws={"label": "PD contribution on the family / on the main template"},
        )
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        paths.append(save_figure(fig, out / "feature_generalisation.png"))
    return paths
