"""The report's interactive parts: the feature detail pane and the attribution-graph explorer,
both data in the page (``<script type="application/json">``) that ``assets/report.js`` reads:
``features_data`` (per feature of ``features.csv``: its ``DETAIL_FIELDS``, its heatmap PNG inlined
at a readable width, its rows of ``interactions.csv``) and ``graph_data`` (a graph JSON reduced to
what the explorer draws: per node its layer, position, kind, influence, cumulative influence and
label; per edge source, target and weight).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from clt_bench.graphs.export import FEATURE_TYPES
from clt_bench.report.figure_html import display_width, png_info

# features.csv columns the detail pane lists, in order (those a file lacks are skipped)
DETAIL_FIELDS = [
    "rank",
    "label",
    "secondary_label",
    "runner_up",
    "runner_up_score",
    "runner_up_partial",
    "label_margin",
    "influence",
    "pd_contribution",
    "delta_pd_constrained",
    "delta_pd_free",
    "gt_corr",
    "zz_range",
    "zz_peak",
    "yy_range",
    "position",
    "act_position",
    "share_yy",
    "share_end",
    "layer_read",
    "layers_written",
    "n_prompts_active",
    "contexts",
]
PAIR_FIELDS = ["dpd_a", "dpd_b", "dpd_pair", "residual"]
HEATMAP = re.compile(r"heatmap_(\d+)_L(\d+)_F(\d+)\.png$")
# a node's feature_type in the graph JSON -> its kind (the inverse of the export's table)
KINDS = {t: "logit" if kind == "target" else kind for kind, t in FEATURE_TYPES.items()}


def _json_script(element_id: str, data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f"<script type='application/json' id='{element_id}'>{text}</script>"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and v != v:  # NaN
        return None
    return v.item() if hasattr(v, "item") else v


def features_data(folder: Path) -> dict[str, Any] | None:
    """The detail pane's data for ``folder`` (a features stage); ``None`` without features.csv."""
    csv = folder / "features.csv"
    if not csv.is_file():
        return None
    df = pd.read_csv(csv)
    if "feature" not in df.columns:
        return None
    fields = [c for c in DETAIL_FIELDS if c in df.columns]
    heatmaps = {}
    for p in sorted(folder.glob("heatmap_*_L*_F*.png")):
        m = HEATMAP.search(p.name)
        data = p.read_bytes()
        info = png_info(data)
        if m and info:
            src = f"data:image/png;base64,{base64.b64encode(data).decode()}"
            heatmaps[f"L{int(m.group(2))}/{int(m.group(3))}"] = {
                "src": src,
                "width": display_width(*info),
            }
    features = {}
    for row in df.to_dict("records"):
        fid = str(row["feature"])
        features[fid] = {k: _clean(row[k]) for k in fields}
        if fid in heatmaps:
            features[fid]["heatmap"] = heatmaps[fid]
    pairs: dict[str, list[dict[str, Any]]] = {}
    pair_fields: list[str] = []
    inter = folder / "interactions.csv"
    if inter.is_file():
        idf = pd.read_csv(inter)
        pair_fields = [c for c in PAIR_FIELDS if c in idf.columns]
        for row in idf.to_dict("records"):
            a, b = str(row.get("feature_a")), str(row.get("feature_b"))
            vals = {k: _clean(row[k]) for k in pair_fields}
            pairs.setdefault(a, []).append({"other": b, **vals})
            swapped = {**vals}
            if "dpd_a" in vals and "dpd_b" in vals:
                swapped["dpd_a"], swapped["dpd_b"] = vals["dpd_b"], vals["dpd_a"]
            pairs.setdefault(b, []).append({"other": a, **swapped})
    n_heat = len(heatmaps)
    return {
        "fields": fields,
        "features": features,
        "pairs": pairs,
        "pair_fields": pair_fields,
        "no_heatmap": f"No heatmap image for this feature: the features stage draws one for its "
        f"top {n_heat} features only (features.heatmaps.safetensors has every feature's matrix).",
        "no_pairs": "No pair interactions for this feature: the features stage ablates pairs "
        "among its top features only (interactions.csv).",
    }


def features_html(folder: Path) -> str:
    """The detail pane and its data; "" without features."""
    data = features_data(folder)
    if data is None:
        return ""
    return (
        "<h3>Feature detail</h3><p class='meta'>Click a row of the features table above (or a "
        "node of the attribution graph) to show that feature here.</p>"
        "<div id='detail' class='detail' aria-live='polite'></div>"
        + _json_script("features-data", data)
    )


def _feature_id(node: dict[str, Any]) -> str | None:
    """``L<layer>/<feature>`` of a transcoder node (``node_id`` is ``<layer>_<feature>_<pos>``)."""
    parts = str(node.get("node_id", "")).split("_")
    if KINDS.get(str(node.get("feature_type"))) != "feature" or len(parts) != 3:
        return None
    return f"L{parts[0]}/{parts[1]}"


def graph_data(path: Path, labels: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The explorer's data from one graph JSON file; ``labels``: feature id -> its features.csv
    fields (label and scores shown on hover)."""
    g = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(g, dict) or "nodes" not in g or "links" not in g:
        raise ValueError("not a graph file: no nodes and links")
    meta = g.get("metadata", {})
    extra = meta.get("clt_bench", {})
    tokens = [str(t) for t in meta.get("prompt_tokens", [])]
    n_layers = int(extra.get("n_layers") or 0)
    if not n_layers:
        layers = [int(n["layer"]) for n in g["nodes"] if str(n.get("layer", "")).isdigit()]
        n_layers = max(layers, default=0)  # the logit row is n_layers + 1
    nodes: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for n in g["nodes"]:
        kind = KINDS.get(n.get("feature_type"), "other")
        fid = _feature_id(n)
        f = labels.get(fid or "", {})
        layer = int(n["layer"]) if str(n.get("layer", "")).lstrip("-").isdigit() else 0
        raw = n.get("raw_influence")
        if raw is None:  # circuit-tracer's own files: cumulative influence only
            raw = max(0.0, 1.0 - float(n.get("influence") or 1.0))
        pos = int(n.get("ctx_idx") or 0)
        name = fid or f"{kind} at position {pos}"
        if kind == "token" and pos < len(tokens):
            name = f"token {tokens[pos]!r} at position {pos}"
        if kind == "error":
            name = f"reconstruction error L{layer} at position {n.get('ctx_idx')}"
        if kind == "logit":
            name = n.get("clerp") or "output"
        scores = ""
        if f:
            keys = [k for k in ("runner_up", "runner_up_score", "gt_corr", "rank") if k in f]
            scores = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k in keys for v in [f[k]]
            )
        index[n["node_id"]] = len(nodes)
        nodes.append(
            {
                "id": n["node_id"],
                "name": name,
                "kind": kind,
                "layer": layer,
                "pos": pos,
                "feature": fid if fid in labels else None,
                "label": f.get("label") or ("not in features.csv" if kind == "feature" else ""),
                "scores": scores,
                "raw": float(raw),
                "cum": float(n.get("influence") if n.get("influence") is not None else 0.0),
                "act": n.get("activation"),
            }
        )
    links = [
        [index[e["source"]], index[e["target"]], float(e["weight"])]
        for e in g["links"]
        if e["source"] in index and e["target"] in index
    ]
    return {
        "prompt": meta.get("prompt", ""),
        "tokens": tokens,
        "n_layers": n_layers,
        "node_threshold": meta.get("node_threshold"),
        "nodes": nodes,
        "links": links,
    }


def graph_html(folder: Path, features_folder: Path, run_dir: Path) -> str:
    """The explorer for the first graph of ``folder`` (a graphs stage); "" without a graph."""
    files = sorted(p for p in folder.glob("*.json") if p.name not in ("scores.json", "stage.json"))
    if not files:
        return ""
    feats = features_data(features_folder) or {"features": {}}
    try:
        data = graph_data(files[0], feats["features"])
    except (KeyError, TypeError, ValueError) as e:
        return f"<p class='why'>The graph explorer could not read {files[0].name} ({e}).</p>"
    top = data["node_threshold"] or 1.0
    rel = files[0].relative_to(run_dir).as_posix()
    others = (
        f" The other graphs of this stage ({', '.join(p.name for p in files[1:])}) open in "
        "circuit-tracer's viewer (README)."
        if len(files) > 1
        else ""
    )
    return (
        f"<h3>Explore the graph: {html.escape(repr(data['prompt']))}</h3>"
        "<p class='meta'>Nodes on a layer × position grid, sized by influence on the target, "
        "coloured by the feature's label. Hover a node for its label and scores; click it to "
        "keep only its incoming and outgoing edges above the edge threshold (click again to "
        f"clear); a feature node also opens in the feature detail pane.{others}</p>"
        "<div class='tools'><label>node threshold (cumulative influence) "
        f"<input type='range' id='node-threshold' min='0.05' max='{top}' step='0.01' "
        f"value='{top}'> <b id='node-threshold-value'></b></label> "
        "<label>edge threshold (× largest |weight|) <input type='range' id='edge-threshold' "
        "min='0' max='0.5' step='0.005' value='0.02'> <b id='edge-threshold-value'></b></label>"
        "</div><div id='graph-legend' class='legend'></div>"
        "<div class='scroll'><div id='graph'></div></div>"
        "<p id='graph-info' class='info'>hover or click a node</p>"
        + _json_script("graph-data", data)
        + f"<p class='meta'>From <a href='{html.escape(rel)}'>{html.escape(files[0].name)}</a> "
        "(circuit-tracer's graph format).</p>"
    )
