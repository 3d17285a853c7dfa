"""The graph file schema circuit-tracer 0.5.0's local viewer reads (``create_graph_files`` writes
it with the pydantic models of ``circuit_tracer/frontend/graph_models.py``; ``serve`` hands the
files to the viewer as they are). The fields and types below are those models', restated so that
the test suite needs no circuit-tracer (which pins transformers 4.x): ``Model`` validates one
``<slug>.json``, ``Metadata`` one entry of ``graph-metadata.json``. Check them against a new
circuit-tracer release by diffing with its ``graph_models.py``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Metadata(BaseModel):
    slug: str
    scan: str
    transcoder_list: list[str]
    prompt_tokens: list[str]
    prompt: str
    node_threshold: float | None = None
    schema_version: int | None = 1


class QParams(BaseModel):
    pinnedIds: list[str]
    supernodes: list[list[str]]
    linkType: str
    clickedId: str
    sg_pos: str


class Node(BaseModel):
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None


class Link(BaseModel):
    source: str
    target: str
    weight: float


class Model(BaseModel):
    model_config = ConfigDict(strict=True)  # no silent coercion (a layer given as int fails)

    metadata: Metadata
    qParams: QParams
    nodes: list[Node]
    links: list[Link]


# the node kinds the viewer draws (feature_type values create_graph_files writes)
FEATURE_TYPES = {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}
