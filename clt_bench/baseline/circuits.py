"""Circuits as data: published encodings (``baselines/*.toml``) and discovered ones, one schema.

A circuit is a set of nodes; a node is an attention head or an MLP at one token position (END, where
the prediction is read, or YY, the start year's last two digits). Heads are written "layer.head"
(e.g. "5.1" = a5.h1), MLPs "mlpL". Edges are optional (published circuits list only their count).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clt_bench.errors import UserError
from clt_bench.io import read_json
from clt_bench.paths import baselines_dir, published_circuit_names

POSITIONS = ("END", "YY")
PUBLISHED = ("hanna2023", "acdc", "eap_ig")
_HEAD = re.compile(r"^(?:a)?(\d+)\.(?:h)?(\d+)$")
_MLP = re.compile(r"^(?:mlp|m)(\d+)$")


@dataclass(frozen=True, order=True)
class Node:
    """One circuit component at one position: ``kind`` is "head" or "mlp"; ``head`` -1 for MLPs."""

    position: str
    layer: int
    kind: str
    head: int = -1

    @property
    def component(self) -> str:
        return f"{self.layer}.{self.head}" if self.kind == "head" else f"mlp{self.layer}"

    @property
    def label(self) -> str:
        """Display name, e.g. ``a5.h1@END`` or ``mlp10@END``."""
        comp = f"a{self.layer}.h{self.head}" if self.kind == "head" else f"mlp{self.layer}"
        return f"{comp}@{self.position}"

    @property
    def order(self) -> int:
        """Position in the residual stream's write order: head L < MLP L < head L+1."""
        return 2 * self.layer + (1 if self.kind == "mlp" else 0)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "component": self.component,
            "kind": self.kind,
            "layer": self.layer,
            "position": self.position,
        }
        if self.kind == "head":
            out["head"] = self.head
        return out


def parse_component(text: str, position: str, where: str = "circuit") -> Node:
    """ "5.1" / "a5.h1" -> head node; "mlp8" / "m8" -> MLP node, at ``position`` (END or YY)."""
    pos = str(position).upper()
    if pos not in POSITIONS:
        raise UserError(f"{where} uses position '{position}' (use END or YY).")
    s = str(text).strip().lower()
    m = _HEAD.match(s)
    if m:
        return Node(pos, int(m.group(1)), "head", int(m.group(2)))
    m = _MLP.match(s)
    if m:
        return Node(pos, int(m.group(1)), "mlp")
    raise UserError(f"{where} names component '{text}', which is neither 'layer.head' nor 'mlpL'.")


@dataclass
class Circuit:
    """A circuit in the shared schema (published or discovered).

    ``edges`` lists (sender label, receiver label) pairs when known; ``None`` means the circuit is
    given by its nodes and evaluated with every node-to-node path at a shared position.
    """

    name: str
    nodes: tuple[Node, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    edges: tuple[tuple[str, str], ...] | None = None
    model: str = ""
    description: str = ""
    # path structure for the path-level evaluation (``clt_bench.baseline.path_faithfulness``), e.g.
    # {"rule": "hanna2023", "feed_only_end_heads": ["0.3", "0.5"]}
    paths: dict[str, Any] = field(default_factory=dict)

    @property
    def n_heads(self) -> int:
        return sum(n.kind == "head" for n in self.nodes)

    @property
    def n_mlps(self) -> int:
        return sum(n.kind == "mlp" for n in self.nodes)

    def at(self, position: str) -> list[Node]:
        return [n for n in self.nodes if n.position == position]

    def components(self) -> dict[str, list[str]]:
        return {p: [n.component for n in self.at(p)] for p in POSITIONS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "clt-bench/circuit/v1",
            "name": self.name,
            "model": self.model,
            "description": self.description,
            "n_nodes": len(self.nodes),
            "n_heads": self.n_heads,
            "n_mlps": self.n_mlps,
            "components": self.components(),
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [list(e) for e in self.edges] if self.edges is not None else None,
            "provenance": self.provenance,
            "published": self.published,
            "paths": self.paths,
        }


def make_circuit(
    name: str, components: dict[str, list[str]], where: str = "circuit", **kw: Any
) -> Circuit:
    """Build a circuit from ``{"END": [...], "YY": [...]}``; duplicates are an error."""
    if not isinstance(components, dict):
        raise UserError(f"{where} needs a [components] table with END and/or YY lists.")
    nodes: list[Node] = []
    for pos, items in components.items():
        if not isinstance(items, list):
            raise UserError(f"{where}: components.{pos} must be a list of component names.")
        nodes.extend(parse_component(c, pos, where) for c in items)
    if len(set(nodes)) != len(nodes):
        raise UserError(f"{where} lists a component twice at the same position.")
    edges = kw.pop("edges", None)
    if edges is not None:
        edges = tuple((str(a), str(b)) for a, b in edges)
    return Circuit(name=name, nodes=tuple(sorted(nodes)), edges=edges, **kw)


def circuit_from_dict(data: dict[str, Any], where: str) -> Circuit:
    """Read the shared schema (a baselines TOML table or a circuit.json)."""
    try:
        return make_circuit(
            str(data.get("name", Path(where).stem)),
            data.get("components", {}),
            where,
            provenance=dict(data.get("provenance", {})),
            published=dict(data.get("published", {})),
            edges=data.get("edges"),
            model=str(data.get("model", "")),
            description=str(data.get("description", "")),
            paths=dict(data.get("paths") or {}),
        )
    except UserError:  # a ValueError, but already one clear sentence
        raise
    except (TypeError, ValueError, AttributeError) as err:
        raise UserError(f"circuit file {where} is malformed ({err}).") from err


def load_circuit(name_or_path: str, root: Path | None = None) -> Circuit:
    """A published circuit by name (``baselines/<name>.toml``) or a circuit JSON/TOML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = (root or baselines_dir()) / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(published_circuit_names(root)) or "none"
            raise UserError(
                f"unknown circuit '{name_or_path}' (known: discovered, {known}, or a path to a "
                f"circuit .json/.toml)."
            )
    if not path.is_file():
        raise UserError(f"circuit file {path} does not exist.")
    if path.suffix == ".json":
        return circuit_from_dict(read_json(path), str(path))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"circuit file {path} is not valid TOML ({err}).") from err
    return circuit_from_dict(data, str(path))


def validate_circuit(circuit: Circuit, n_layers: int, n_heads: int) -> Circuit:
    """Raise ``UserError`` if the circuit names a layer or head the model lacks."""
    for node in circuit.nodes:
        if not 0 <= node.layer < n_layers:
            raise UserError(
                f"circuit '{circuit.name}' names {node.label}, but the model has only {n_layers} "
                f"layers (0-{n_layers - 1})."
            )
        if node.kind == "head" and not 0 <= node.head < n_heads:
            raise UserError(
                f"circuit '{circuit.name}' names {node.label}, but the model has only {n_heads} "
                f"heads per layer (0-{n_heads - 1})."
            )
    return circuit


def all_nodes(n_layers: int, n_heads: int, positions: tuple[str, ...] = POSITIONS) -> list[Node]:
    """Every head and MLP at every position: the candidate set of discovery and random controls."""
    out: list[Node] = []
    for pos in positions:
        for layer in range(n_layers):
            out.extend(Node(pos, layer, "head", h) for h in range(n_heads))
            out.append(Node(pos, layer, "mlp"))
    return out


def load_run_circuit(run_dir: str | Path) -> Circuit | None:
    """A run's baseline circuit (``<run>/baseline/circuit.json``; None without a baseline)."""
    path = Path(run_dir) / "baseline" / "circuit.json"
    return load_circuit(str(path)) if path.is_file() else None
