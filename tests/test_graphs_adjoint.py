"""The hand-written transpose of the frozen model (``graphs/adjoint.py``) gives the same graph as
differentiating the bridge's frozen forward pass (``Attributor`` + ``constant_terms``)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from _graphs_helpers import KINDS, make_clt, tiny_loaded

import clt_bench.graphs.build as build
from clt_bench.config import GraphsConfig
from clt_bench.graphs.adjoint import supports_adjoint
from clt_bench.graphs.local_replacement import build_replacement

TOKENS = torch.tensor([50256, 464, 1175, 15436, 422, 262, 614, 1596, 1157])
FIELDS = ("adjacency", "constant_in", "unexplained_in", "unexplained_abs", "target_values")


def _both(loaded, clt, target, cfg):
    fast = build.build_graph(loaded, clt, TOKENS, target, cfg)
    with mock.patch.object(build, "supports_adjoint", lambda rm: False):
        ref = build.build_graph(loaded, clt, TOKENS, target, cfg)
    return fast, ref


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("cross_layer", "skip"), [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("cap", [4096, 5])
def test_adjoint_graph_equals_autograd_graph(kind, cross_layer, skip, cap):
    loaded = tiny_loaded(3, 16, 1, torch.float64)
    clt = make_clt(loaded, TOKENS, kind, cross_layer, skip, seed=1)
    cfg = GraphsConfig(batch_size=4, max_feature_nodes=cap)
    fast, ref = _both(loaded, clt, "logits", cfg)
    assert fast.n_features > 0
    torch.testing.assert_close(fast.features, ref.features, rtol=0, atol=0)
    for f in FIELDS:
        torch.testing.assert_close(getattr(fast, f), getattr(ref, f), rtol=1e-9, atol=1e-10)
    for k, v in ref.constant_split.items():
        torch.testing.assert_close(fast.constant_split[k], v, rtol=1e-9, atol=1e-10)
    assert torch.equal(fast.node_mask, ref.node_mask)
    assert torch.equal(fast.edge_mask, ref.edge_mask)


def test_adjoint_used_only_where_it_applies():
    loaded = tiny_loaded(2, 16, 0, torch.float64)
    clt = make_clt(loaded, TOKENS, "jumprelu")
    assert supports_adjoint(build_replacement(loaded.bridge, clt, TOKENS))
    two = build_replacement(loaded.bridge, clt, torch.stack([TOKENS, TOKENS]))
    assert not supports_adjoint(two)  # several prompts: the autograd path
    used = mock.patch.object(build, "FrozenAdjoint", side_effect=AssertionError("adjoint used"))
    with used, pytest.raises(AssertionError, match="adjoint used"):
        build.build_graph(loaded, clt, TOKENS, "logits", GraphsConfig())
