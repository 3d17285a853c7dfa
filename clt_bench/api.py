"""The public Python API: the handful of entry points a notebook needs, with runnable examples.

Everything here is re-exported lazily from the package root (``from clt_bench import ...`` imports
torch and TransformerLens only when a name is first used). The examples use the ``quick`` preset:
the toy model and every stage at smoke-test size (~20 s on one CPU core); use ``toy`` for a real
run. Metric definitions: ``docs/methods.md``; stages and file formats: ``docs/architecture.md``.

Typical session::

    from clt_bench import load_config, run_pipeline, read_metrics
    cfg = load_config("quick")
    run_pipeline(cfg, "results/quick")
    read_metrics("results/quick")          # one row per headline metric
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clt_bench.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from clt_bench.clt.model import CrossLayerTranscoder
    from clt_bench.config import RunConfig
    from clt_bench.graphs.graph import Graph
    from clt_bench.graphs.targets import Target
    from clt_bench.models import LoadedModel
    from clt_bench.pipeline import RunContext
    from clt_bench.task.dataset import TaskBatch


def load_config(preset: str = "toy", overrides: Sequence[str] = ()) -> RunConfig:
    """A run configuration: a preset (name or path to a ``.toml``) plus ``key=value`` overrides.

    ``preset`` may also be a run directory: its ``config.json`` (the exact config that run used).
    Every value is checked here (types, choices, ranges, names of tasks, circuits and files); a bad
    one raises ``UserError`` (a ``ValueError``) naming the key.

    >>> from clt_bench import load_config
    >>> cfg = load_config("toy", ["clt.n_features=256", "graphs.node_threshold=0.7"])
    >>> cfg.clt.n_features, cfg.graphs.node_threshold
    (256, 0.7)
    >>> load_config("toy", ["clt.lr=-1"])
    Traceback (most recent call last):
    clt_bench.errors.UserError: config key 'clt.lr' must be > 0 (got -1.0).
    """
    from clt_bench.config import load_config as _load_config

    return _load_config(preset, list(overrides))


def load_model(
    name: str = "toy", device: str = "cpu", dtype: str = "float32", seed: int = 0
) -> LoadedModel:
    """A language model as a TransformerLens ``TransformerBridge`` plus its tokenizer.

    ``name``: ``toy`` (shipped, offline), ``gpt2`` (hub or local cache), ``gpt2-random`` (GPT-2
    small's shape, seeded random weights), ``hf:<name-or-path>``. LayerNorm is never folded.

    >>> from clt_bench import load_model
    >>> model = load_model("toy")
    >>> model.n_layers, model.d_model
    (4, 128)
    """
    from clt_bench.models import load_model as _load_model

    return _load_model(name, device, dtype, seed)


def load_clt(path: str | Path) -> CrossLayerTranscoder:
    """A transcoder from a directory in circuit-tracer's layout (a CLT or a per-layer set).

    ``path`` holds ``config.yaml``, ``W_enc_{i}.safetensors`` and ``W_dec_{i}.safetensors``
    (layout: ``docs/architecture.md``); a finished run has one in ``<run>/clt``.

    >>> from clt_bench import load_clt, load_config, run_pipeline
    >>> _ = run_pipeline(load_config("quick"), "results/quick", progress=lambda line: None)
    >>> clt = load_clt("results/quick/clt")
    >>> clt.n_layers, clt.spec.n_features
    (4, 64)
    """
    from clt_bench.clt.circuit_tracer_io import load_clt as _load_clt

    return _load_clt(path)


def load_task_batch(config: RunConfig, model: LoadedModel, dataset: str | None = None) -> TaskBatch:
    """The task prompts of ``config.task`` tokenised for ``model`` (clean and 01-corrupted).

    ``dataset``: ``discovery`` (balanced over YY) or ``headline`` (uniform over years); default
    ``config.task.dataset``. ``batch.clean`` / ``batch.corrupted`` are ``[n, pos]`` token ids,
    ``batch.yy`` ``[n]`` the start-year suffixes; the answer is read at ``batch.end_pos``.

    >>> from clt_bench import load_config, load_model, load_task_batch
    >>> model = load_model("toy")
    >>> batch = load_task_batch(load_config("toy"), model)
    >>> len(batch), batch.prompts[0].split(" to ")[0][-4:].isdigit()
    (490, True)
    """
    from clt_bench.task.stage import load_task_batch as _load_task_batch

    return _load_task_batch(config, model, dataset)


def build_graph(
    model: LoadedModel,
    clt: CrossLayerTranscoder,
    prompt: str | torch.Tensor | Sequence[int],
    target: str | Sequence[str] | Sequence[Target] = "greater-than",
    config: RunConfig | None = None,
) -> Graph:
    """The attribution graph of one prompt on the local replacement model, pruned and scored.

    ``target``: ``"greater-than"`` (the task's logit difference), ``"logits"`` (the top tokens) or
    token strings. Pruning thresholds and batch size come from ``config.graphs`` (default: the
    defaults). ``graph.scores`` holds the completeness and replacement scores
    (``docs/methods.md``); ``clt_bench.graphs.draw_graph(graph, "g.png")`` draws it and
    ``clt_bench.graphs.write_graph_json`` writes the Neuronpedia-style JSON.

    >>> from clt_bench import build_graph, load_clt, load_config, load_model, run_pipeline
    >>> _ = run_pipeline(load_config("quick"), "results/quick", progress=lambda line: None)
    >>> model, clt = load_model("toy"), load_clt("results/quick/clt")
    >>> graph = build_graph(model, clt, "The war lasted from the year 1732 to the year 17")
    >>> sorted(graph.scores)[:2]
    ['completeness', 'pruned_completeness']
    """
    from clt_bench.config import RunConfig
    from clt_bench.graphs import build_graph as _build_graph

    cfg = config if config is not None else RunConfig()
    return _build_graph(model, clt, prompt, target, cfg.graphs)


@dataclass
class FeatureScores:
    """The top features of a transcoder on the task, ranked by influence.

    ``table``: one row per feature (rank, ``L{layer}/{id}``, label, influence, contributions,
    shape scores; columns as in a run's ``features/features.csv``); ``heatmaps`` ``[K, 97, A]``:
    each feature's YY x ZZ logit attribution (rows YY = ``yy_values``, columns ZZ = 0..A-1, A the
    task's answer count: 100 for greater-than). Labels are relative to the batch's relation.
    """

    table: pd.DataFrame
    heatmaps: np.ndarray
    yy_values: np.ndarray


def score_features(
    model: LoadedModel,
    clt: CrossLayerTranscoder,
    batch: TaskBatch,
    top_k: int = 20,
    n_prompts: int | None = None,
    config: RunConfig | None = None,
) -> FeatureScores:
    """Rank the transcoder's features by influence on the task and score the top ``top_k``.

    ``n_prompts``: score on the first prompt of ``n_prompts`` YY values spread over 2..98 (the
    features stage uses ``config.graphs.n_prompts``); ``None`` uses every prompt of ``batch``.
    Attribution mode and label thresholds come from ``config.features``. Ablations and corpus
    contexts are left to the features stage (``run_pipeline``). Definitions: ``docs/methods.md``.

    >>> from clt_bench import load_clt, load_config, load_model, load_task_batch, run_pipeline
    >>> from clt_bench import score_features
    >>> cfg = load_config("quick")
    >>> _ = run_pipeline(cfg, "results/quick", progress=lambda line: None)
    >>> model, clt = load_model("toy"), load_clt("results/quick/clt")
    >>> scores = score_features(model, clt, load_task_batch(cfg, model), top_k=5, n_prompts=8)
    >>> len(scores.table), scores.heatmaps.shape
    (5, (5, 97, 100))
    """
    import pandas as pd

    from clt_bench.config import RunConfig
    from clt_bench.features.shape_scores import LabelRule
    from clt_bench.features.stage import TaskRelation, feature_rows
    from clt_bench.features.task_attributions import (
        influence_ranking,
        one_per_yy,
        task_attributions,
    )

    if top_k < 1:
        raise UserError(f"top_k must be >= 1 (got {top_k}).")
    fc = (config if config is not None else RunConfig()).features
    if n_prompts is not None:
        batch = one_per_yy(batch, n_prompts)
    att = task_attributions(
        model.bridge,
        clt,
        batch,
        prompts_per_pass=fc.prompts_per_pass,
        heatmap_mode=fc.heatmap_mode,
        progress=False,
    )
    keys, influence = influence_ranking(att)
    relation = TaskRelation.of(batch)
    rows, heat = feature_rows(
        att, keys[:top_k], influence[:top_k], clt, None, LabelRule.from_config(fc), relation
    )
    table = pd.DataFrame(rows).drop(columns=["contexts"], errors="ignore")
    return FeatureScores(table=table, heatmaps=heat, yy_values=np.asarray(relation.rows))


def run_pipeline(
    config: RunConfig,
    run_dir: str | Path,
    stages: Sequence[str] | None = None,
    resume: bool = True,
    progress: Callable[[str], None] = print,
    overlap: bool = False,
) -> RunContext:
    """Run the pipeline's stages (default: all) into ``run_dir``, resuming finished ones.

    Stages: task, baseline, activations, clt, graphs, features, plt, compare, report
    (``docs/architecture.md``). A finished stage whose config is unchanged is not recomputed
    unless ``resume=False``. Returns the run context (``ctx.results[stage]``: its numbers).
    ``overlap=True`` trains the PLT in a second (spawned) process beside the CLT where the
    thread settings fit the cores, as ``clt-bench run`` does; the calling script then needs an
    ``if __name__ == "__main__":`` guard.

    >>> from clt_bench import load_config, run_pipeline
    >>> ctx = run_pipeline(load_config("quick"), "results/quick", progress=lambda line: None)
    >>> sorted(ctx.results)[:3]
    ['activations', 'baseline', 'clt']
    """
    from clt_bench.pipeline import run_pipeline as _run_pipeline

    return _run_pipeline(
        config,
        run_dir,
        list(stages) if stages else None,
        resume=resume,
        progress=progress,
        overlap=overlap,
    )


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """A finished run's headline metrics (``<run>/metrics.json``) as a DataFrame.

    Columns: ``metric`` (``stage.name``), ``stage``, ``name``, ``value``, ``published`` (the
    literature's value where one is set beside it, else NaN), ``source``, ``definition`` (the
    anchor of its definition in ``docs/methods.md``). Rows: the report's headline order first.

    >>> from clt_bench import load_config, read_metrics, run_pipeline
    >>> _ = run_pipeline(load_config("quick"), "results/quick", progress=lambda line: None)
    >>> df = read_metrics("results/quick")
    >>> float(df.set_index("metric").loc["task.prob_diff", "published"])
    0.817
    """
    import pandas as pd

    from clt_bench.io import read_json
    from clt_bench.report.headline import HEADLINE_ORDER, PUBLISHED
    from clt_bench.report.links import methods_anchor

    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise UserError(f"no metrics.json in {run_dir}; run the pipeline there first.")
    flat: dict[str, Any] = read_json(path).get("headline", {})
    order = [k for k in HEADLINE_ORDER if k in flat] + sorted(set(flat) - set(HEADLINE_ORDER))
    rows = []
    for key in order:
        _, published, source = PUBLISHED.get(key, (key, None, ""))
        stage, _, name = key.partition(".")
        rows.append(
            {
                "metric": key,
                "stage": stage,
                "name": name,
                "value": flat[key],
                "published": np.nan if published is None else published,
                "source": source,
                "definition": f"docs/methods.md#{methods_anchor(key)}",
            }
        )
    cols = ["metric", "stage", "name", "value", "published", "source", "definition"]
    return pd.DataFrame(rows, columns=cols)
