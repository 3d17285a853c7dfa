"""Attribution graphs on the local replacement model (SPEC-clt.md §4–6).

Public API (used by the feature-scoring stage):

- ``build_graph(loaded, clt, prompt_or_tokens, target, cfg) -> Graph``
- ``target_attributions(loaded, clt, prompt_or_tokens, directions) -> TargetAttribution``
- ``target_attributions_many(loaded, clt, tokens, directions) -> list[TargetAttribution]``
- ``constrained_patch(...)`` / ``free_patch(...)`` -> ``PatchResult``
- ``write_graph_json`` / ``read_graph_json`` / ``draw_graph``
"""

from clt_bench.graphs.attribution import TargetAttribution
from clt_bench.graphs.build import (
    build_graph,
    prompt_tokens,
    score_graph,
    target_attributions,
    target_attributions_many,
)
from clt_bench.graphs.graph import Graph
from clt_bench.graphs.replacement import ReplacementModel, build_replacement, run_frozen
from clt_bench.graphs.targets import Target, make_targets

__all__ = [
    "Graph",
    "ReplacementModel",
    "Target",
    "TargetAttribution",
    "build_graph",
    "build_replacement",
    "make_targets",
    "prompt_tokens",
    "run_frozen",
    "score_graph",
    "target_attributions",
    "target_attributions_many",
]
