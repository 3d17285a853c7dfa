"""Grading against a circuit known by construction (the planted model: baselines/planted.toml).

Only a model whose circuit was planted has a truth to grade against; for every other model these
functions return nothing. Definitions: docs/methods.md, "planted" -- discovery precision and
recall of nodes and edges (edges compared without the key/value channel; the planted edges are
the high-level model's, the clean token embedding into the YY node included), the planted-site
influence share (features whose encoder layer and position is a planted MLP site) and the YY
probe (ridge regression of YY on the units at the YY position up to the planted YY node's layer,
fitted on the even-indexed prompts and scored on the odd ones, the same for every unit kind).
"""

from __future__ import annotations

import math
import tomllib
from typing import TYPE_CHECKING, Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.baseline.circuits import Circuit, load_circuit
from clt_bench.paths import baselines_dir
from clt_bench.task.dataset import TaskBatch

if TYPE_CHECKING:
    from clt_bench.clt.model import CrossLayerTranscoder

KNOWN = ("planted",)  # circuits known by construction, each tied to its own model
PROBE_TOLERANCE = 5  # years
PROBE_RIDGE = 1.0  # ridge penalty on standardised units


def known_circuit(model_name: str) -> Circuit | None:
    """The circuit planted in ``model_name``, or None for a model without one (a planted circuit
    names the embedded model it was trained into, so the names must be equal)."""
    for name in KNOWN:
        circuit = load_circuit(name)
        if circuit.model == model_name:
            return circuit
    return None


def _strip(label: str) -> str:
    return label.split(":")[0]


def truth_edges(circuit: Circuit) -> set[tuple[str, str]]:
    """The planted component edges (channels dropped), from the circuit's TOML."""
    data = tomllib.loads((baselines_dir() / f"{circuit.name}.toml").read_text(encoding="utf-8"))
    edges = data.get("high_level", {}).get("edges", {}).get("components", [])
    return {(_strip(a), _strip(b)) for a, b in edges}


def _pr(found: set[Any], truth: set[Any]) -> dict[str, float | None]:
    hit = len(found & truth)
    return {
        "precision": hit / len(found) if found else None,
        "recall": hit / len(truth) if truth else None,
        "found": len(found),
        "true": len(truth),
        "hit": hit,
    }


def discovery_scores(found: Circuit, truth: Circuit) -> dict[str, Any]:
    """Node and edge precision / recall of ``found`` against ``truth`` (see module docstring)."""
    nodes = _pr(set(found.nodes), set(truth.nodes))
    f_edges = {(_strip(a), _strip(b)) for a, b in (found.edges or ())}
    t_edges = truth_edges(truth)
    edges = _pr(f_edges, t_edges)
    true_labels = {n.label for n in truth.nodes}
    return {
        "truth": truth.name,
        "node_precision": nodes["precision"],
        "node_recall": nodes["recall"],
        "edge_precision": edges["precision"],
        "edge_recall": edges["recall"],
        "nodes": nodes,
        "edges": edges,
        "missed_nodes": sorted(n.label for n in set(truth.nodes) - set(found.nodes)),
        "extra_nodes": sorted(n.label for n in set(found.nodes) - set(truth.nodes)),
        "missed_edges": sorted(map(list, t_edges - f_edges)),
        "extra_edges": sorted(list(e) for e in f_edges - t_edges if _strip(e[1]) in true_labels),
    }


def mlp_sites(truth: Circuit, yy_pos: int, end_pos: int) -> set[tuple[int, int]]:
    """(layer, position index) of the planted MLP nodes."""
    pos = {"YY": yy_pos, "END": end_pos}
    return {(n.layer, pos[n.position]) for n in truth.nodes if n.kind == "mlp"}


def site_share(
    layers: torch.Tensor,
    positions: torch.Tensor,
    influence: torch.Tensor,
    sites: set[tuple[int, int]],
) -> float:
    """Share of ``influence`` [n] of features at (layer, position) in ``sites``."""
    total = float(influence.double().sum())
    if total <= 0 or not sites:
        return math.nan
    hit = torch.tensor(
        [(int(a), int(p)) in sites for a, p in zip(layers, positions, strict=True)],
        dtype=torch.bool,
    )
    return float(influence.double()[hit].sum()) / total


def ridge_probe(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Fit y ~ x on even rows, score odd rows: held-out R^2 and share within PROBE_TOLERANCE.

    ``x`` [n, k] unit activations, ``y`` [n] targets. Units are standardised with the training
    rows' statistics; units constant on the training rows are dropped.
    """
    x, y = x.double(), y.double()
    tr, te = torch.arange(0, len(y), 2), torch.arange(1, len(y), 2)
    mu, sd = x[tr].mean(0), x[tr].std(0)
    keep = sd > 1e-8
    if not bool(keep.any()) or len(te) == 0:
        return {"r2": 0.0, "within_tolerance": 0.0, "n_units": 0, "n_test": len(te)}
    xs = (x[:, keep] - mu[keep]) / sd[keep]
    xt = torch.cat([xs[tr], torch.ones(len(tr), 1, dtype=xs.dtype)], 1)
    reg = PROBE_RIDGE * torch.eye(xt.shape[1], dtype=xs.dtype)
    reg[-1, -1] = 0.0
    # dual form when units outnumber prompts: w = X^T (X X^T + aI)^-1 y
    if xt.shape[1] > xt.shape[0]:
        gram = xt @ xt.T + PROBE_RIDGE * torch.eye(len(tr), dtype=xs.dtype)
        alpha = torch.linalg.solve(gram, y[tr])
        w = xt.T @ alpha
    else:
        w = torch.linalg.solve(xt.T @ xt + reg, xt.T @ y[tr])
    pred = torch.cat([xs[te], torch.ones(len(te), 1, dtype=xs.dtype)], 1) @ w
    resid = ((pred - y[te]) ** 2).sum()
    total = ((y[te] - y[te].mean()) ** 2).sum()
    return {
        "r2": float(1 - resid / total) if total > 0 else math.nan,
        "within_tolerance": float(((pred - y[te]).abs() <= PROBE_TOLERANCE).double().mean()),
        "n_units": int(keep.sum()),
        "n_test": len(te),
    }


@torch.no_grad()
def yy_probe_inputs(
    bridge: TransformerBridge, tokens: torch.Tensor, yy_pos: int, up_to: int
) -> dict[str, Any]:
    """resid_mid and MLP neuron activations at YY for layers 0..``up_to``: [n, L', d] and
    [n, L' * d_mlp]."""
    names = [f"blocks.{i}.hook_resid_mid" for i in range(up_to + 1)]
    names += [f"blocks.{i}.mlp.hook_post" for i in range(up_to + 1)]
    device = next(bridge.parameters()).device
    _, cache = bridge.run_with_cache(tokens.to(device), names_filter=lambda n: n in set(names))
    resid = torch.stack([cache[n][:, yy_pos] for n in names[: up_to + 1]], 1).float().cpu()
    neurons = torch.cat([cache[n][:, yy_pos] for n in names[up_to + 1 :]], 1).float().cpu()
    return {"resid_mid": resid, "neurons": neurons}


@torch.no_grad()
def transcoder_yy_units(clt: CrossLayerTranscoder, resid: torch.Tensor) -> torch.Tensor:
    """Feature activations of a transcoder's layers 0..L'-1 at YY: resid [n, L', d] -> [n, L'*F].

    The transcoder's encoder reads every layer; the layers beyond L' get zeros and are cut off.
    """
    n, lp, d = resid.shape
    full = torch.zeros(n, clt.n_layers, d, dtype=resid.dtype)
    full[:, :lp] = resid
    dev = next(clt.parameters()).device
    acts = clt.encode(full.to(dev, next(clt.parameters()).dtype)).float().cpu()  # [n, L, F]
    return acts[:, :lp].reshape(n, -1)


def yy_probe_scores(
    bridge: TransformerBridge,
    transcoders: dict[str, CrossLayerTranscoder],
    batch: TaskBatch,
    truth: Circuit,
) -> dict[str, Any]:
    """The YY probe (module docstring) for each transcoder in ``transcoders`` (kind -> model) and
    for MLP neurons, on ``batch``'s clean prompts, at the layers up to the planted YY node's."""
    up_to = max(n.layer for n in truth.at("YY"))
    inputs = yy_probe_inputs(bridge, batch.clean, batch.yy_pos, up_to)
    units = {
        f"{k}_features": transcoder_yy_units(m, inputs["resid_mid"]) for k, m in transcoders.items()
    }
    units["mlp_neurons"] = inputs["neurons"]
    return {
        "layers": list(range(up_to + 1)),
        "n_prompts": len(batch.yy),
        **{kind: ridge_probe(x, batch.yy.float()) for kind, x in units.items()},
    }
