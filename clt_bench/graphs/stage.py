"""The graphs stage: the attribution graph of the configured prompt, its scores, JSON and PNG."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clt_bench.baseline.circuits import Circuit
from clt_bench.baseline.ground_truth import known_circuit, mlp_sites, site_share
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.config import RunConfig
from clt_bench.errors import UserError
from clt_bench.graphs.build import build_graph
from clt_bench.graphs.draw import draw_graph
from clt_bench.graphs.export import write_graph_json
from clt_bench.graphs.graph import Graph
from clt_bench.graphs.prompt import task_graph_prompt
from clt_bench.graphs.targets import TaskTarget, parse_yy
from clt_bench.io import run_metadata, save_tensors, write_json
from clt_bench.models import LoadedModel
from clt_bench.stats import mean_ci
from clt_bench.task.dataset import TaskBatch, build_batch, one_per_yy
from clt_bench.task.spec import RELATION_NAMES, load_task

log = logging.getLogger(__name__)


def slugify(prompt: str, max_len: int = 48) -> str:
    """A file-name slug: the prompt's ASCII words joined by '-' ("the-war-lasted-..."), plus a
    hash of the prompt whenever those words do not spell it out (other characters, truncation),
    so two different prompts -- e.g. two non-ASCII ones -- never share a graph file."""
    words = "-".join(re.findall(r"[a-z0-9]+", prompt.lower()))
    slug = words[:max_len].strip("-")
    if slug and slug == re.sub(r"\s+", "-", prompt.strip().lower()):
        return slug
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:10]
    return f"{slug or 'graph'}-{digest}"


def write_graph_outputs(graph: Graph, json_path: Path, scan: str) -> dict[str, Path]:
    """Write ``json_path`` and the PNG beside it; returns their paths."""
    json_path = Path(json_path)
    png = json_path.with_suffix(".png")
    write_graph_json(graph, json_path, scan=scan)
    draw_graph(graph, png)
    return {"json": json_path, "png": png}


def format_graph_report(graph: Graph, top: int = 10) -> str:
    """The text the CLI prints: scores, each target's split, top features by influence."""
    s = graph.scores
    lines = [
        f"prompt: {graph.prompt!r} ({graph.n_pos} tokens, {graph.n_active} active features, "
        f"{graph.n_features} attributed, {int(graph.node_mask.sum())} nodes / "
        f"{int(graph.edge_mask.sum())} edges after pruning)",
        f"completeness score  {s['completeness']:.4f}   "
        f"(pruned graph {s['pruned_completeness']:.4f})",
        f"replacement score   {s['replacement']:.4f}   "
        f"(pruned graph {s['pruned_replacement']:.4f})",
    ]
    for j, t in enumerate(graph.targets[:10]):
        sp = graph.target_split(j)
        lines.append(
            f"target {t.label!r}: value {sp['value']:+.4f} = features {sp['features']:+.4f} "
            f"+ errors {sp['errors']:+.4f} + tokens {sp['tokens']:+.4f} + constant "
            f"{sp['constant']:+.4f} (pos_embed {sp['constant.pos_embed']:+.4f}, b_dec "
            f"{sp['constant.b_dec']:+.4f}, biases/LN {sp['constant.biases_and_ln']:+.4f})"
        )
    if len(graph.targets) > 10:
        lines.append(f"... and {len(graph.targets) - 10} more targets")
    lines.append("top features by influence (layer, position, feature):")
    for f in graph.top_features(top):
        lines.append(
            f"  L{f['layer']:<2} pos {f['pos']:<3} {f['token']!r:<12} #{f['feature']:<6} "
            f"act {f['activation']:8.4f}  influence {f['influence']:.4f}"
            f"{'' if f['kept'] else '  (pruned)'}"
        )
    return "\n".join(lines)


POSITION_CLASSES = ("YY", "END", "rest")


def target_definition(relation: str, target: str = "task", n_answers: int = 100) -> str:
    """The graph target in words, for the task's relation (scores.json and the report)."""
    if target not in ("task", "greater-than"):
        return (
            f"target '{target}' (graphs.target); every target direction is demeaned over the "
            "vocabulary (graphs.demean)"
        )
    relation = "gt" if target == "greater-than" else relation
    good, bad = {
        "gt": ("ZZ > YY", "ZZ <= YY"),
        "lt": ("ZZ < YY", "ZZ >= YY"),
        "exact": ("ZZ = the answer", "ZZ != the answer"),
    }[relation]
    return (
        f"{RELATION_NAMES[relation]} target: mean logit of the answers {good} minus mean logit of "
        f"the answers {bad} (coefficients +1/n_correct and -1/n_other, summing to zero, so a shift "
        f"of every logit or of the {n_answers} answer logits leaves it unchanged); every target "
        "direction is demeaned over the vocabulary (graphs.demean)"
    )


SEED_TEMPLATE, SEED_NOUN, SEED_YEAR = "goodfire", "war", 1711  # "The war lasted ... 1711 to 17"


def yy_position(graph: Graph) -> int:
    """Position of the YY token ("11" of 1711) of the prompt's last year; -1 if none."""
    try:
        yy = f"{parse_yy(graph.prompt):02d}"
    except UserError:
        return -1
    hits = [i for i, t in enumerate(graph.token_strings) if t.strip() == yy]
    return hits[-1] if hits else -1


def influence_share_by_position(
    graph: Graph, yy_pos: int | None = None, truth: Circuit | None = None
) -> dict[str, float]:
    """Share of the feature nodes' total influence on the targets (``graph.influence``, before
    pruning) at the YY token, at END (the last position) and at every other position; with a
    planted ``truth`` circuit also the share at its MLP sites (``baseline.ground_truth``)."""
    yy_pos = yy_position(graph) if yy_pos is None else yy_pos
    infl = graph.influence[: graph.n_features].double()
    pos = graph.features[:, 1]
    end = graph.n_pos - 1
    total = float(infl.sum())
    if total <= 0:
        return dict.fromkeys(POSITION_CLASSES, float("nan"))
    yy = float(infl[pos == yy_pos].sum()) if yy_pos != end else 0.0
    at_end = float(infl[pos == end].sum())
    out = {"YY": yy / total, "END": at_end / total, "rest": 1.0 - (yy + at_end) / total}
    if truth is not None and yy_pos >= 0:
        sites = mlp_sites(truth, yy_pos, end)
        out["planted_sites"] = site_share(graph.features[:, 0], pos, infl, sites)
    return out


# models trained only on documents that start with BOS (the synthetic corpus of the toy and of the
# planted model: clt_bench.model_training.synthetic_corpus)
BOS_TRAINED_MODELS = ("toy", "planted")


def prompt_distribution_issue(
    cfg: RunConfig, loaded: LoadedModel, tokens: list[int] | torch.Tensor
) -> str:
    """Why a graph prompt lies outside the training distribution of the model or of the
    transcoder ("" when it does not): no BOS at position 0 where every training document of the
    model (the toy's corpus) or of the transcoder (``activations.corpus = "toy"``) starts with
    one. Such a prompt's graph describes the model off its distribution."""
    bos = loaded.tokenizer.bos_token_id
    first = int(tokens[0]) if len(tokens) else None
    if bos is None or first == bos:
        return ""
    who = []
    if loaded.name in BOS_TRAINED_MODELS:
        who.append(f"the {loaded.name} model")
    if cfg.activations.corpus == "toy":
        who.append("the transcoder (activations.corpus = toy)")
    if not who:
        return ""
    return (
        f"no BOS at position 0 (the prompt starts with token {first}), but every document "
        f"{' and '.join(who)} was trained on starts with BOS"
    )


def seed_prompt_shares(
    cfg: RunConfig, loaded: LoadedModel, clt: CrossLayerTranscoder
) -> dict[str, Any] | None:
    """Influence shares of the seed study's prompt, built with the task's goodfire template
    (None when the task has no such template: the report says so)."""
    spec = load_task(cfg.task.task)
    if SEED_TEMPLATE not in spec.templates:
        return None
    tpl = spec.template(SEED_TEMPLATE)
    b = build_batch(spec, loaded.tokenizer, tpl, [SEED_YEAR], [SEED_NOUN])
    task = TaskTarget(tpl.relation, int(b.yy[0]), int(b.answer[0]), spec.n_answers)
    graph = build_graph(loaded, clt, b.clean[0], cfg.graphs.target, cfg.graphs, task)
    issue = prompt_distribution_issue(cfg, loaded, b.clean[0].tolist())
    return {
        "prompt": b.prompts[0],
        "tokens": b.clean[0].tolist(),
        "in_distribution": not issue,
        "out_of_distribution_reason": issue,
        **influence_share_by_position(graph, b.yy_pos, known_circuit(loaded.name)),
        **graph.scores,
    }


def task_prompt_shares(
    cfg: RunConfig, loaded: LoadedModel, clt: CrossLayerTranscoder, batch: TaskBatch
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Mean influence shares (and graph scores) over ``graphs.share_prompts`` task prompts, with
    95 % bootstrap intervals over the prompts; and the per-prompt shares behind them."""
    sub = one_per_yy(batch, cfg.graphs.share_prompts)
    truth = known_circuit(loaded.name)
    n_answers = len(batch.answer_ids)
    rows = []
    for i in range(len(sub)):
        ans = int(sub.answer[i]) if len(sub.answer) else -1
        task = TaskTarget(batch.relation, int(sub.yy[i]), ans, n_answers)
        graph = build_graph(loaded, clt, sub.clean[i], cfg.graphs.target, cfg.graphs, task)
        rows.append({**influence_share_by_position(graph, sub.yy_pos, truth), **graph.scores})
    keys = rows[0].keys() if rows else ()
    out: dict[str, Any] = {
        "n_prompts": len(rows),
        "template": batch.template,
        **{k: float(np.nanmean([r[k] for r in rows])) for k in keys},
    }
    values: dict[str, np.ndarray] = {}
    for k in (*POSITION_CLASSES, "planted_sites"):
        if k in keys:
            values[k] = np.array([r[k] for r in rows], dtype=np.float64)
            out[f"{k}_ci"] = list(mean_ci(values[k])[1:])
    return out, values


def write_share_values(rows_by_class: dict[str, np.ndarray], path: Path) -> None:
    """The finite per-prompt influence shares (their mean is the reported share) as
    ``<stage>/per_prompt.safetensors``: ``yy``, ``end``, ``rest``, ``planted_sites``."""
    save_tensors(
        path,
        {k.lower(): torch.from_numpy(v[np.isfinite(v)]) for k, v in rows_by_class.items()},
    )


def run_graphs_stage(
    cfg: RunConfig,
    loaded: LoadedModel,
    clt: CrossLayerTranscoder,
    batch: TaskBatch | None,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Graph of the run's graph prompt (``graphs.prompt``, else the task's: ``graphs.prompt``
    module) for the task's target: writes <out>/graphs/<slug>.json, .png and scores.json, with
    the influence share by position (YY / END / rest) of that graph, of the seed study's prompt
    (goodfire template) and averaged over ``graphs.share_prompts`` task prompts."""
    stage_dir = Path(out_dir) / "graphs"
    spec = load_task(cfg.task.task)
    gp = task_graph_prompt(spec, loaded.tokenizer, cfg.graphs.prompt, cfg.graphs.prepend_bos)
    graph = build_graph(loaded, clt, gp.tokens, cfg.graphs.target, cfg.graphs, gp.target)
    graph.prompt = gp.text
    bos_text = loaded.tokenizer.bos_token or ""
    slug = slugify(gp.text[len(bos_text) :].lstrip() if gp.text.startswith(bos_text) else gp.text)
    paths = write_graph_outputs(graph, stage_dir / f"{slug}.json", scan=f"{loaded.name}-clt")
    yy_pos = gp.yy_pos if gp.yy_pos >= 0 else None
    shares: dict[str, Any] = {
        "definition": "share of the feature nodes' influence on the target "
        "at the YY token, at END and elsewhere (before pruning)",
        "graph": influence_share_by_position(graph, yy_pos, truth=known_circuit(loaded.name)),
    }
    graph_issue = prompt_distribution_issue(cfg, loaded, graph.tokens.tolist())
    seed = seed_prompt_shares(cfg, loaded, clt)
    if seed is not None:
        shares["seed_prompt"] = seed
    else:
        shares["seed_prompt_skipped"] = (
            f"the task has no '{SEED_TEMPLATE}' template, so the seed study's prompt "
            f"(Goodfire's 'The war lasted from the year 1711 to 17') is not built"
        )
    if batch is not None and cfg.graphs.share_prompts > 0:
        shares["task_prompts"], values = task_prompt_shares(cfg, loaded, clt, batch)
        write_share_values(values, stage_dir / "per_prompt.safetensors")
    result: dict[str, Any] = {
        "model": loaded.name,
        "graph": paths["json"].name,
        "drawing": paths["png"].name,
        "task": spec.name,
        "task_template": batch.template if batch is not None else None,
        "prompt_source": gp.source,
        "prompt_template": gp.template,
        "relation": gp.target.relation,
        **graph.summary(),
        "influence_share": shares,
        # graph prompts outside the model's / transcoder's training distribution (the report
        # flags them): prompt name -> reason
        "out_of_distribution": {
            k: v
            for k, v in (
                ("graph", graph_issue),
                ("seed_prompt", (seed or {}).get("out_of_distribution_reason", "")),
            )
            if v
        },
        "target_definition": target_definition(
            gp.target.relation, cfg.graphs.target, spec.n_answers
        ),
        "config_hash": cfg.section_hash("model", "clt", "graphs"),
        **run_metadata(config=cfg.graphs, seeds={"clt": cfg.clt.seed}),
    }
    write_json(stage_dir / "scores.json", result)
    log.info("graphs stage wrote %s", stage_dir)
    return result
