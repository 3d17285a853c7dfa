"""The attribution graph of one prompt.

Node order (as circuit-tracer): active features that were attributed [n_f] (layer, pos, feature
sorted), error nodes [L * pos] (layer-major), token nodes [pos], targets [n_t]. ``adjacency[t, s]``
is the edge from s to t. Every feature row and target row satisfies, exactly,

    value[t] = Σ_s adjacency[t, s] + unexplained_in[t] + constant_in[t]

where ``unexplained_in`` is carried by active features not in the graph (only when the graph was
capped at ``max_feature_nodes``) and ``constant_in`` by biases, positional embeddings, b_dec, b_enc
and frozen-LayerNorm offsets (``constant_split`` for the targets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from clt_bench.graphs.graph_scores import ERROR, FEATURE, TARGET, TOKEN
from clt_bench.graphs.targets import Target


@dataclass
class Graph:
    prompt: str
    tokens: torch.Tensor  # [pos]
    token_strings: list[str]
    n_layers: int
    features: torch.Tensor  # [n_f, 3] (layer, pos, feature)
    activations: torch.Tensor  # [n_f]
    feature_values: torch.Tensor  # [n_f] pre-activations (the features' node values)
    error_norms: torch.Tensor  # [L, pos]
    targets: list[Target]
    target_values: torch.Tensor  # [n_t]
    adjacency: torch.Tensor  # [n, n]
    constant_in: torch.Tensor  # [n]
    unexplained_in: torch.Tensor  # [n] signed
    unexplained_abs: torch.Tensor  # [n]
    constant_split: dict[str, torch.Tensor]  # name -> [n_t]
    n_active: int  # active features in the prompt (>= n_f)
    influence: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [n]
    node_mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    edge_mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))
    scores: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # ----- structure -------------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_layers * self.n_pos + self.n_pos + len(self.targets)

    def offsets(self) -> dict[str, int]:
        """First node index of each kind."""
        e0 = self.n_features
        t0 = e0 + self.n_layers * self.n_pos
        y0 = t0 + self.n_pos
        return {"feature": 0, "error": e0, "token": t0, "target": y0}

    def kinds(self) -> torch.Tensor:
        """[n] node kinds (scores.FEATURE / ERROR / TOKEN / TARGET)."""
        return torch.cat(
            [
                torch.full((self.n_features,), FEATURE),
                torch.full((self.n_layers * self.n_pos,), ERROR),
                torch.full((self.n_pos,), TOKEN),
                torch.full((len(self.targets),), TARGET),
            ]
        )

    def target_weights(self) -> torch.Tensor:
        """[n] influence weights: the targets' weights, zero elsewhere."""
        w = torch.zeros(self.n_nodes, dtype=torch.float64)
        w[self.offsets()["target"] :] = torch.tensor(
            [t.weight for t in self.targets], dtype=torch.float64
        )
        return w

    def always_kept(self) -> torch.Tensor:
        """[n] tokens and targets survive pruning."""
        k = self.kinds()
        return (k == TOKEN) | (k == TARGET)

    def node_values(self) -> torch.Tensor:
        """[n] features: pre-activation; errors: error-vector norm; tokens: 1; targets: value."""
        return torch.cat(
            [
                self.feature_values.double(),
                self.error_norms.reshape(-1).double(),
                torch.ones(self.n_pos, dtype=torch.float64),
                self.target_values.double(),
            ]
        )

    def describe(self, i: int) -> dict[str, Any]:
        """Kind, layer, position and id of node ``i``."""
        o = self.offsets()
        if i < o["error"]:
            layer, pos, feat = self.features[i].tolist()
            return {"kind": "feature", "layer": layer, "pos": pos, "feature": feat}
        if i < o["token"]:
            layer, pos = divmod(i - o["error"], self.n_pos)
            return {"kind": "error", "layer": layer, "pos": pos, "feature": -1}
        if i < o["target"]:
            pos = i - o["token"]
            return {"kind": "token", "layer": -1, "pos": pos, "feature": int(self.tokens[pos])}
        j = i - o["target"]
        return {
            "kind": "target",
            "layer": self.n_layers,
            "pos": self.n_pos - 1,
            "feature": j,
            "label": self.targets[j].label,
        }

    # ----- summaries -------------------------------------------------------------------------
    def target_split(self, j: int = 0) -> dict[str, float]:
        """How target ``j``'s value splits over features / errors / tokens / constant terms."""
        o = self.offsets()
        row = self.adjacency[o["target"] + j].double()
        out = {
            "value": float(self.target_values[j]),
            "features": float(row[: o["error"]].sum() + self.unexplained_in[o["target"] + j]),
            "errors": float(row[o["error"] : o["token"]].sum()),
            "tokens": float(row[o["token"] : o["target"]].sum()),
            "constant": float(self.constant_in[o["target"] + j]),
        }
        for name, vals in self.constant_split.items():
            out[f"constant.{name}"] = float(vals[j])
        out["residual"] = (
            out["value"] - out["features"] - out["errors"] - out["tokens"] - out["constant"]
        )
        return out

    def top_features(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` feature nodes with the highest influence on the targets."""
        if self.n_features == 0:
            return []
        infl = self.influence[: self.n_features]
        order = infl.argsort(descending=True)[:k]
        out = []
        for i in order.tolist():
            layer, pos, feat = self.features[i].tolist()
            out.append(
                {
                    "layer": layer,
                    "pos": pos,
                    "feature": feat,
                    "token": self.token_strings[pos],
                    "activation": float(self.activations[i]),
                    "influence": float(infl[i]),
                    "kept": bool(self.node_mask[i]),
                }
            )
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "n_tokens": self.n_pos,
            "n_active_features": self.n_active,
            "n_feature_nodes": self.n_features,
            "n_nodes_pruned": int(self.node_mask.sum()),
            "n_edges_pruned": int(self.edge_mask.sum()),
            "scores": dict(self.scores),
            "targets": [
                {"label": t.label, "weight": t.weight, "prob": t.prob, **self.target_split(j)}
                for j, t in enumerate(self.targets)
            ],
            "top_features": self.top_features(),
            **{k: v for k, v in self.meta.items() if k != "config"},
        }
