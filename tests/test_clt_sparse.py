"""Sparse decoding equals the dense reference: loss, statistics and every gradient (fp32)."""

from __future__ import annotations

import math

import pytest
import torch

from clt_bench.clt import sparse_decode as SD
from clt_bench.clt.losses import TrainObjective
from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder

RTOL = 1e-5


def _clt(
    activation: str,
    cross: bool = True,
    skip: bool = False,
    decoder: str = "dense",
    L: int = 3,
    d: int = 8,
    F: int = 40,
    seed: int = 0,
) -> CrossLayerTranscoder:
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(
        CLTSpec(
            L, d, F, activation, k=3, cross_layer=cross, skip=skip, bandwidth=0.3, decoder=decoder
        )
    )
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
        clt.b_enc.sub_(1.0)  # sparse: most pre-activations well below the threshold
        clt.log_threshold.copy_(torch.rand(L, F) * 0.5 - 1.0)  # theta in [0.37, 0.61]
        clt.input_scale.copy_(torch.linspace(0.5, 2.0, L))
        clt.output_scale.copy_(torch.linspace(1.5, 0.7, L))
    return clt


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = float(b.detach().abs().max()) if b.numel() else 0.0
    torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL * max(scale, 1e-12), msg=what)


def _grads(obj: TrainObjective, x, y, lam) -> tuple[torch.Tensor, torch.Tensor, dict]:
    obj.zero_grad(set_to_none=True)
    loss, stats, fired = obj(x, y, lam)
    loss.backward()
    return (
        stats,
        fired,
        {k: p.grad.clone() for k, p in obj.named_parameters() if p.grad is not None},
    )


CASES = [
    ("jumprelu", True, False),
    ("jumprelu", False, True),
    ("jumprelu", True, True),
    ("relu", True, False),
    ("topk", True, True),
    ("batchtopk", True, False),
    ("batchtopk", False, True),
]


@pytest.mark.parametrize("backend", ["csr", "embedding_bag"])
@pytest.mark.parametrize(("activation", "cross", "skip"), CASES)
def test_objective_sparse_equals_dense(activation, cross, skip, backend, monkeypatch):
    if backend == "embedding_bag":  # the CUDA / bf16 kernel, checked here on CPU
        monkeypatch.setattr(SD, "CSR_DEVICES", ())
    x, y = torch.randn(64, 3, 8) * 2, torch.randn(64, 3, 8)
    # the training objective runs in training mode (the trainer calls .train(); BatchTopK keeps
    # the batch's top k*n there and records the cut for its inference threshold)
    dense = TrainObjective(_clt(activation, cross, skip).train(), 0.01, 4.0, decoder="dense")
    sparse = TrainObjective(_clt(activation, cross, skip).train(), 0.01, 4.0, decoder="sparse")
    s_d, f_d, g_d = _grads(dense, x, y, 0.05)
    s_s, f_s, g_s = _grads(sparse, x, y, 0.05)
    _close(s_s, s_d, "stats")
    kth_d, kth_s = dense.clt.pop_batch_kth(), sparse.clt.pop_batch_kth()
    if activation == "batchtopk":
        _close(kth_s, kth_d, "batch cut")
    else:
        assert kth_d is None and kth_s is None
    assert torch.equal(f_s, f_d)
    assert g_s.keys() == g_d.keys()
    for k in g_d:
        _close(g_s[k], g_d[k], k)
    if activation == "jumprelu":  # the window (h < theta) contributes to the threshold gradient
        assert float(g_d["clt.log_threshold"].abs().sum()) > 0
    l0 = float(s_d[4]) / 3
    assert 0 < l0 < 0.5 * 40  # really sparse, and not empty


def test_threshold_gradient_needs_the_window_entries():
    """Gathering only the active entries would lose the window's share of the theta gradient."""
    clt = _clt("jumprelu")
    x, y = torch.randn(64, 3, 8) * 2, torch.randn(64, 3, 8)
    obj = TrainObjective(clt, 0.0, 4.0, decoder="sparse")
    _, _, g_full = _grads(obj, x, y, 0.05)
    theta = clt.threshold.detach()
    pre = clt.pre_activations(x).detach()
    inside_below = ((pre - theta).abs() < clt.spec.bandwidth / 2) & (pre <= theta)
    assert int(inside_below.sum()) > 0
    orig = SD.grad_support
    try:  # only the active entries
        SD.grad_support = lambda pre, kind, th, bw: pre > th
        _, _, g_active = _grads(obj, x, y, 0.05)
    finally:
        SD.grad_support = orig
    assert not torch.allclose(g_active["clt.log_threshold"], g_full["clt.log_threshold"])


@pytest.mark.parametrize(
    ("activation", "skip"),
    [("jumprelu", True), ("topk", False), ("batchtopk", False), ("relu", False)],
)
def test_module_forward_sparse_equals_dense(activation, skip):
    x = torch.randn(4, 16, 3, 8) * 2  # extra leading dims
    out = {}
    for mode in ("dense", "sparse"):
        clt = _clt(activation, skip=skip, decoder=mode)
        y_hat, acts = clt(x)
        (y_hat.square().sum() + acts.sum()).backward()
        out[mode] = (
            y_hat.detach(),
            {k: p.grad for k, p in clt.named_parameters() if p.grad is not None},
        )
    _close(out["sparse"][0], out["dense"][0], "y_hat")
    for k, g in out["dense"][1].items():
        _close(out["sparse"][1][k], g, k)


def test_auto_decides_by_density():
    cpu = torch.device("cpu")
    limit = SD.AUTO_MAX_DENSITY["cpu"]
    assert SD.use_sparse("auto", int(limit * 1000) - 1, 1000, cpu)
    assert not SD.use_sparse("auto", int(limit * 1000) + 1, 1000, cpu)
    assert SD.use_sparse("sparse", 1000, 1000, cpu) and not SD.use_sparse("dense", 0, 1000, cpu)
    clt = _clt("jumprelu", decoder="auto")
    acts = torch.zeros(10, 3, 40)
    acts[0, 0, 1] = 2.0
    y_auto = clt.decode(acts)
    clt_dense = _clt("jumprelu", decoder="dense")
    _close(y_auto, clt_dense.decode(acts), "auto decode")
    # a one-hot activation decodes to b_dec + that feature's decoder rows
    ref = clt.b_dec.detach().clone()
    ref[0:] += 2.0 * clt.W_dec[0].detach()[1]
    _close(y_auto[0].detach(), ref / clt.output_scale[:, None], "one-hot")


def test_scatter_targets_gradients_are_views():
    b = torch.randn(3, 4, requires_grad=True)
    c0 = torch.randn(5, 12, requires_grad=True)  # targets 0..2
    c2 = torch.randn(5, 4, requires_grad=True)  # target 2
    y = SD.scatter_targets(b, [0, 2], [c0, c2])
    ref = (
        b.expand(5, 3, 4)
        + c0.view(5, 3, 4)
        + torch.cat([torch.zeros(5, 2, 4), c2.view(5, 1, 4)], 1)
    )
    assert torch.allclose(y, ref)
    g = torch.randn(5, 3, 4)
    gb, g0, g2 = torch.autograd.grad(y, [b, c0, c2], g)
    assert torch.allclose(gb, g.sum(0)) and torch.allclose(g0, g.reshape(5, 12))
    assert torch.allclose(g2, g[:, 2])


def test_sparse_rows_offsets():
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=torch.bool)
    rows = SD.SparseRows.from_mask(mask)
    assert rows.cols.tolist() == [1, 2, 0, 3] and rows.offsets.tolist() == [0, 2, 2]
    topk = SD.SparseRows.from_topk(torch.tensor([[2, 1], [3, 0]]), 4)
    assert topk.cols.tolist() == [1, 2, 0, 3] and topk.offsets.tolist() == [0, 2]
    assert math.isclose(topk.nnz, 4)


def test_preact_penalty_matches_composed_ops():
    from test_clt_losses import preact_penalty

    from clt_bench.clt.losses import PreactPenaltyFn

    pre = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    theta = torch.rand(5, dtype=torch.float64, requires_grad=True)
    norms = torch.rand(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(PreactPenaltyFn.apply, (pre, theta, norms))
    ref = preact_penalty(pre[:, None], theta[None], norms[None])
    assert torch.allclose(PreactPenaltyFn.apply(pre, theta, norms), ref)
