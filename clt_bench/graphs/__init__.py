"""Attribution graphs on the local replacement model (docs/methods.md#graphs): graphs of one
prompt (``build_graph``), target attributions of one or many prompts, interventions, graph files
and drawings; ``__all__`` is the public API."""

from clt_bench.graphs.build import (
    build_graph,
    prompt_tokens,
    score_graph,
    target_attributions,
    target_attributions_many,
)
from clt_bench.graphs.draw import draw_graph
from clt_bench.graphs.edge_weights import TargetAttribution
from clt_bench.graphs.export import read_graph_json, write_graph_json
from clt_bench.graphs.graph import Graph
from clt_bench.graphs.interventions import (
    Intervention,
    PatchResult,
    constrained_patch,
    free_patch,
)
from clt_bench.graphs.local_replacement import ReplacementModel, build_replacement, run_frozen
from clt_bench.graphs.targets import Target, make_targets

__all__ = [
    "Graph",
    "Intervention",
    "PatchResult",
    "ReplacementModel",
    "Target",
    "TargetAttribution",
    "build_graph",
    "build_replacement",
    "constrained_patch",
    "draw_graph",
    "free_patch",
    "make_targets",
    "prompt_tokens",
    "read_graph_json",
    "run_frozen",
    "score_graph",
    "target_attributions",
    "target_attributions_many",
    "write_graph_json",
]
