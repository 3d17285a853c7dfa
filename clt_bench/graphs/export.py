"""Graph files in the circuit-tracer / Neuronpedia graph JSON format (docs/architecture.md,
"Graph JSON"): circuit-tracer's node ids and feature types; clt-bench's extras ride along as extra
node keys and under ``metadata["clt_bench"]``, which the front end ignores. Only the pruned graph
is written; ``read_graph_json`` rebuilds it as a ``Graph``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from clt_bench.errors import UserError
from clt_bench.graphs.graph import Graph
from clt_bench.graphs.targets import Target
from clt_bench.io import read_json, write_json

FEATURE_TYPES = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "token": "embedding",
    "target": "logit",
}


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _cumulative_share(infl: torch.Tensor) -> torch.Tensor:
    """[n] share of total influence covered up to and including each node (sorted desc)."""
    total = float(infl.clamp(min=0).sum())
    out = torch.zeros_like(infl)
    if total <= 0:
        return out
    order = infl.argsort(descending=True)
    out[order] = torch.cumsum(infl[order].clamp(min=0), 0) / total
    return out


def node_id(graph: Graph, i: int, vocab_size: int) -> tuple[str, dict[str, Any]]:
    d = graph.describe(i)
    kind, layer, pos, feat = d["kind"], d["layer"], d["pos"], d["feature"]
    # (node id, "feature", "layer", "jsNodeId") of each kind
    if kind == "feature":
        ids = f"{layer}_{feat}_{pos}", _cantor(layer, feat), str(layer), f"{layer}_{feat}-0"
    elif kind == "error":
        ids = f"{layer}_-1_{pos}", -1, str(layer), f"{layer}_-1-{pos}"
    elif kind == "token":
        ids = f"E_{feat}_{pos}", pos, "E", f"E_{feat}-{pos}"
    else:
        key = graph.targets[feat].key(vocab_size, feat)
        L = graph.n_layers
        ids = f"{L + 1}_{key}_{pos}", key, str(L + 1), f"L_{key}-{pos}"
    nid, feature, js_layer, js_id = ids
    return nid, {"feature": feature, "layer": js_layer, "jsNodeId": js_id}


def graph_to_json(graph: Graph, slug: str, scan: str, vocab_size: int) -> dict[str, Any]:
    """The pruned graph as a Neuronpedia/circuit-tracer graph dict."""
    o = graph.offsets()
    values, cum = graph.node_values(), _cumulative_share(graph.influence)
    kept = graph.node_mask.nonzero()[:, 0].tolist()
    ids: dict[int, str] = {}
    nodes = []
    for i in kept:
        nid, extra = node_id(graph, i, vocab_size)
        ids[i] = nid
        d = graph.describe(i)
        node = {
            "node_id": nid,
            **extra,
            "ctx_idx": d["pos"],
            "feature_type": FEATURE_TYPES[d["kind"]],
            "token_prob": 0.0,
            "is_target_logit": False,
            "run_idx": 0,
            "reverse_ctx_idx": 0,
            "clerp": "",
            "influence": float(cum[i]),
            "activation": None,
            "raw_influence": float(graph.influence[i]),
            "node_value": float(values[i]),
            "constant": float(graph.constant_in[i]),
            "unexplained": float(graph.unexplained_in[i]),
        }
        if d["kind"] == "feature":
            node["activation"] = float(graph.activations[i])
        if d["kind"] == "target":
            t = graph.targets[i - o["target"]]
            node.update(
                token_prob=t.prob,
                is_target_logit=i == o["target"],
                influence=None,
                clerp=f'Output "{t.label}" (p={t.prob:.3f})',
            )
        nodes.append(node)
    dst, src = (graph.edge_mask & graph.node_mask[:, None] & graph.node_mask[None, :]).nonzero(
        as_tuple=True
    )
    links = [
        {"source": ids[s], "target": ids[t], "weight": float(graph.adjacency[t, s])}
        for s, t in zip(src.tolist(), dst.tolist(), strict=True)
    ]
    targets = []
    for t in graph.targets:
        nz = t.direction.nonzero()[:, 0]
        targets.append(
            {
                "label": t.label,
                "weight": t.weight,
                "token_id": t.token_id,
                "prob": t.prob,
                "indices": nz.tolist(),
                "coefficients": t.direction[nz].tolist(),
            }
        )
    meta = {
        "slug": slug,
        "scan": scan,
        "transcoder_list": [],
        "prompt_tokens": graph.token_strings,
        "prompt_token_ids": graph.tokens.tolist(),
        "prompt": graph.prompt,
        "node_threshold": graph.meta.get("node_threshold"),
        "schema_version": 1,
        "clt_bench": {
            "n_layers": graph.n_layers,
            "vocab_size": vocab_size,
            "tokens": graph.tokens.tolist(),
            "n_active": graph.n_active,
            "scores": graph.scores,
            "targets": targets,
            "target_values": graph.target_values.tolist(),
            "target_splits": [graph.target_split(j) for j in range(len(graph.targets))],
            "error_norms": graph.error_norms.tolist(),
            **{k: v for k, v in graph.meta.items() if k != "node_threshold"},
        },
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": qparams, "nodes": nodes, "links": links}


def write_graph_json(
    graph: Graph,
    path: str | os.PathLike[str],
    scan: str = "clt-bench",
    vocab_size: int | None = None,
) -> Path:
    """Write the pruned graph (atomically); the slug is the file name without ``.json``."""
    path = Path(path)
    if vocab_size is None:
        vocab_size = int(graph.targets[0].direction.shape[0]) if graph.targets else 0
    return write_json(path, graph_to_json(graph, path.stem, scan, vocab_size))


def read_graph_json(path: str | os.PathLike[str]) -> Graph:
    """Rebuild the (pruned) ``Graph`` of a file written by ``write_graph_json``."""
    data = read_json(path)
    try:
        meta = data["metadata"]
        extra = meta["clt_bench"]
        nodes, links = data["nodes"], data["links"]
    except (KeyError, TypeError) as err:
        raise UserError(f"{path} is not a clt-bench graph file (missing {err}).") from err
    L, V = int(extra["n_layers"]), int(extra["vocab_size"])
    tokens = torch.tensor(extra["tokens"], dtype=torch.long)
    P = len(tokens)
    feats = [n for n in nodes if n["feature_type"] == FEATURE_TYPES["feature"]]
    feats.sort(key=lambda n: (int(n["layer"]), n["ctx_idx"], int(n["node_id"].split("_")[1])))
    targets = []
    for t in extra["targets"]:
        d = torch.zeros(V, dtype=torch.float64)
        d[t["indices"]] = torch.tensor(t["coefficients"], dtype=torch.float64)
        targets.append(Target(t["label"], d, t["weight"], t["token_id"], t["prob"]))
    n_f, n_t = len(feats), len(targets)
    n = n_f + L * P + P + n_t
    g = Graph(
        prompt=meta["prompt"],
        tokens=tokens,
        token_strings=list(meta["prompt_tokens"]),
        n_layers=L,
        features=torch.tensor(
            [[int(f["layer"]), f["ctx_idx"], int(f["node_id"].split("_")[1])] for f in feats],
            dtype=torch.long,
        ).reshape(-1, 3),
        activations=torch.tensor([f["activation"] for f in feats], dtype=torch.float64),
        feature_values=torch.tensor([f["node_value"] for f in feats], dtype=torch.float64),
        error_norms=torch.tensor(extra["error_norms"], dtype=torch.float64).reshape(L, P),
        targets=targets,
        target_values=torch.tensor(extra["target_values"], dtype=torch.float64),
        adjacency=torch.zeros(n, n, dtype=torch.float64),
        constant_in=torch.zeros(n),
        unexplained_in=torch.zeros(n),
        unexplained_abs=torch.zeros(n),
        constant_split={},
        n_active=int(extra["n_active"]),
        influence=torch.zeros(n, dtype=torch.float64),
        node_mask=torch.zeros(n, dtype=torch.bool),
        edge_mask=torch.zeros(n, n, dtype=torch.bool),
        scores=dict(extra["scores"]),
        meta={
            k: v
            for k, v in extra.items()
            if k
            not in (
                "n_layers",
                "vocab_size",
                "tokens",
                "n_active",
                "scores",
                "targets",
                "target_values",
                "target_splits",
                "error_norms",
            )
        }
        | {"node_threshold": meta.get("node_threshold")},
    )
    index = {node_id(g, i, V)[0]: i for i in range(n)}
    for node in nodes:
        if node["node_id"] not in index:
            raise UserError(f"{path} has a node '{node['node_id']}' outside its own layout.")
        i = index[node["node_id"]]
        g.node_mask[i] = True
        g.influence[i] = node.get("raw_influence") or 0.0
        g.constant_in[i] = node.get("constant", 0.0)
        g.unexplained_in[i] = node.get("unexplained", 0.0)
    for link in links:
        s, t = index[link["source"]], index[link["target"]]
        g.adjacency[t, s] = link["weight"]
        g.edge_mask[t, s] = True
    return g
