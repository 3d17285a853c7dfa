"""The graphs stage: the attribution graph of the configured prompt, its scores, JSON and PNG."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.config import RunConfig
from clt_bench.graphs.build import build_graph
from clt_bench.graphs.draw import draw_graph
from clt_bench.graphs.export import write_graph_json
from clt_bench.graphs.graph import Graph
from clt_bench.io import run_metadata, write_json
from clt_bench.models import LoadedModel
from clt_bench.task.dataset import TaskBatch

log = logging.getLogger(__name__)


def slugify(prompt: str, max_len: int = 48) -> str:
    """A file-name slug: the prompt's words joined by '-' ("the-war-lasted-...")."""
    slug = "-".join(re.findall(r"[a-z0-9]+", prompt.lower()))[:max_len].strip("-")
    return slug or "graph"


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
        lines.append(f"  L{f['layer']:<2} pos {f['pos']:<3} {f['token']!r:<12} #{f['feature']:<6} "
                     f"act {f['activation']:8.4f}  influence {f['influence']:.4f}"
                     f"{'' if f['kept'] else '  (pruned)'}")
    return "\n".join(lines)


def run_graphs_stage(cfg: RunConfig, loaded: LoadedModel, clt: CrossLayerTranscoder,
                     batch: TaskBatch | None, out_dir: str | Path) -> dict[str, Any]:
    """Graph of ``cfg.graphs.prompt``: writes <out>/graphs/<slug>.json, .png and scores.json."""
    stage_dir = Path(out_dir) / "graphs"
    graph = build_graph(loaded, clt, cfg.graphs.prompt, cfg.graphs.target, cfg.graphs)
    slug = slugify(cfg.graphs.prompt)
    paths = write_graph_outputs(graph, stage_dir / f"{slug}.json", scan=f"{loaded.name}-clt")
    result: dict[str, Any] = {
        "model": loaded.name,
        "graph": paths["json"].name,
        "drawing": paths["png"].name,
        "task_template": batch.template if batch is not None else None,
        **graph.summary(),
        "config_hash": cfg.section_hash("model", "clt", "graphs"),
        **run_metadata(config=cfg.graphs, seeds={"clt": cfg.clt.seed}),
    }
    write_json(stage_dir / "scores.json", result)
    log.info("graphs stage wrote %s", stage_dir)
    return result
