"""CLT objective on hand-made tensors, the JumpReLU straight-through gradient, fold equivalence."""

from __future__ import annotations

import math

import torch

from clt_bench.clt.losses import TrainObjective
from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder, JumpReLUFn
from clt_bench.clt.train import lambda_s_at, lr_factor
from clt_bench.config import CLTConfig


# the objective's terms written out (reference formulas for the tests)
def sparsity_penalty(acts: torch.Tensor, dec_norms: torch.Tensor, c: float) -> torch.Tensor:
    """acts [n, L, F], dec_norms [L, F] -> mean over n of sum tanh(c * ||W_dec|| * a); scalar."""
    return torch.tanh(c * dec_norms * acts).sum(dim=(-2, -1)).mean()


def preact_penalty(pre: torch.Tensor, theta: torch.Tensor, dec_norms: torch.Tensor) -> torch.Tensor:
    """pre [n, L, F], theta [L, F] (or scalar 0), dec_norms [L, F] -> mean over n; scalar."""
    return (torch.relu(theta - pre) * dec_norms).sum(dim=(-2, -1)).mean()


def mse_per_layer(y_hat_norm: torch.Tensor, y_norm: torch.Tensor) -> torch.Tensor:
    """[n, L, d] x2 -> [L] mean squared error per layer (mean over tokens and d_model)."""
    return (y_hat_norm - y_norm).pow(2).mean(dim=(0, 2))


def test_penalties_by_hand():
    acts = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]])  # [n=1, L=2, F=2]
    norms = torch.tensor([[3.0, 0.5], [2.0, 1.0]])
    expected = math.tanh(4 * 0.5 * 2.0) + math.tanh(4 * 2.0 * 1.0)
    assert math.isclose(float(sparsity_penalty(acts, norms, 4.0)), expected, rel_tol=1e-6)
    pre = torch.tensor([[[0.1, -1.0], [0.5, 0.2]]])
    theta = torch.tensor([[0.3, 0.3], [0.3, 0.3]])
    # relu(theta - pre) = [[0.2, 1.3], [0, 0.1]] weighted by norms
    expected_p = 0.2 * 3.0 + 1.3 * 0.5 + 0.0 * 2.0 + 0.1 * 1.0
    assert math.isclose(float(preact_penalty(pre, theta, norms)), expected_p, rel_tol=1e-6)
    y_hat = torch.zeros(2, 2, 3)
    y = torch.ones(2, 2, 3)
    y[:, 1] = 2.0
    assert torch.allclose(mse_per_layer(y_hat, y), torch.tensor([1.0, 4.0]))


def _tiny_clt(
    activation: str = "jumprelu", cross: bool = True, skip: bool = False, seed: int = 0
) -> CrossLayerTranscoder:
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(
        CLTSpec(3, 5, 7, activation, k=2, cross_layer=cross, skip=skip, bandwidth=0.5)
    )
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        clt.log_threshold.fill_(math.log(0.1))
    return clt


def test_objective_total_is_sum_of_parts():
    clt = _tiny_clt()
    obj = TrainObjective(clt, lambda_p=0.01, tanh_c=4.0)
    x, y = torch.randn(6, 3, 5), torch.randn(6, 3, 5)
    loss, stats, fired = obj(x, y, 0.2)
    _, mse, sparsity, preact, l0, _ = stats.tolist()
    assert math.isclose(float(loss.detach()), mse + 0.2 * sparsity + 0.01 * preact, rel_tol=1e-5)
    with torch.no_grad():
        y_hat, acts = clt(x)
    assert math.isclose(mse, float(((y_hat - y) ** 2).mean(dim=(0, 2)).sum()), rel_tol=1e-5)
    assert math.isclose(l0, float((acts > 0).sum() / 6), rel_tol=1e-6)
    assert fired.shape == (3, 7) and int(fired.sum()) == int((acts > 0).sum())
    # TopK gets no sparsity or pre-activation penalty
    _, stats_k, _ = TrainObjective(_tiny_clt("topk"), 0.01, 4.0)(x, y, 0.2)
    assert stats_k[2] == 0 and stats_k[3] == 0


def test_jumprelu_threshold_straight_through_gradient():
    h = torch.tensor([0.05, 0.28, 0.32, 0.9], requires_grad=True)
    theta = torch.tensor(0.3, requires_grad=True)
    a = JumpReLUFn.apply(h, theta, 0.1)
    assert torch.equal(a.detach(), torch.tensor([0.0, 0.0, 0.32, 0.9]))
    a.sum().backward()
    # d a / d theta = -theta / eps * 1[|h - theta| < eps / 2]: h = 0.28 and 0.32 are in the window
    assert math.isclose(float(theta.grad), -2 * 0.3 / 0.1, rel_tol=1e-5)
    assert torch.equal(h.grad, torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_fold_normalisation_equivalence():
    for cross, skip in ((True, False), (False, True)):
        clt = _tiny_clt(cross=cross, skip=skip)
        clt.input_scale.copy_(torch.tensor([0.5, 2.0, 3.0]))
        clt.output_scale.copy_(torch.tensor([4.0, 0.25, 1.5]))
        x = torch.randn(9, 3, 5)
        y_ref, a_ref = clt(x)
        # by hand: normalise -> CLT with unit scales -> denormalise
        plain = _tiny_clt(cross=cross, skip=skip)
        xn = x * clt.input_scale[:, None]
        y_norm, a_plain = plain(xn)
        assert torch.allclose(y_ref, y_norm / clt.output_scale[:, None], atol=1e-5)
        clt.fold_normalisation()
        y_fold, a_fold = clt(x)
        assert torch.allclose(y_fold, y_ref, atol=1e-5)
        assert torch.equal(a_fold > 0, a_ref > 0) and torch.allclose(a_fold, a_plain, atol=1e-5)


def test_schedules():
    c = CLTConfig(n_steps=100, warmup_steps=10, decay_start=0.8, lambda_s=2.0, sparsity_ramp=0.5)
    assert lr_factor(0, c) == 0.1 and lr_factor(9, c) == 1.0 and lr_factor(50, c) == 1.0
    assert math.isclose(lr_factor(90, c), 0.5) and lr_factor(99, c) > 0
    assert lambda_s_at(0, c) == 0 and lambda_s_at(25, c) == 1.0 and lambda_s_at(80, c) == 2.0


def test_float_masks_equal_the_bool_reference():
    """JumpReLUFn and PreactPenaltyFn build their masks from sign(); the values and gradients must
    equal the comparison + torch.where formulation bit for bit, ties (h == theta) and window
    edges included."""
    from clt_bench.clt.losses import PreactPenaltyFn

    g = torch.Generator().manual_seed(0)
    n, F, eps = 64, 9, 0.25
    theta = (torch.rand(F, generator=g) + 0.1).requires_grad_(True)
    h = torch.randn(n, F, generator=g)
    h[0] = theta.detach()  # ties: not active, not below, inside the window
    h[1] = theta.detach() + 0.125  # at the window's edges (up to the rounding of h)
    h[2] = theta.detach() - 0.125
    h.requires_grad_(True)
    grad_out = torch.randn(n, F, generator=g)
    norms = torch.rand(F, generator=g).requires_grad_(True)

    def reference(h, theta, norms):
        a = torch.where(h > theta, h, 0.0)
        p = (torch.relu(theta - h).sum(0) * norms).sum() / n
        return a, p

    a_ref, p_ref = reference(h, theta, norms)
    ref_grads = torch.autograd.grad((a_ref * grad_out).sum() + 3 * p_ref, (h, norms))
    # the reference threshold gradient: -theta / eps * sum over the window of grad_out, plus
    # the pre-activation penalty's 3 / n * norms * #(h < theta)
    window = (h.detach() - theta.detach()).abs() < eps / 2
    below = (h.detach() < theta.detach()).sum(0)
    ref_theta = -(theta.detach() / eps) * torch.where(window, grad_out, 0.0).sum(0)
    ref_theta = ref_theta + 3 / n * norms.detach() * below

    a = JumpReLUFn.apply(h, theta, eps)
    p = PreactPenaltyFn.apply(h, theta, norms)
    grads = torch.autograd.grad((a * grad_out).sum() + 3 * p, (h, theta, norms))
    assert torch.equal(a, a_ref) and torch.equal(p, p_ref)
    assert torch.equal(grads[0], ref_grads[0]) and torch.equal(grads[2], ref_grads[1])
    assert torch.allclose(grads[1], ref_theta, rtol=1e-6, atol=1e-6)
    assert bool(window[0].all()) and 0 < int(window.sum()) < n * F  # the cases are exercised


def test_row_norm_gradient_matches_vector_norm():
    """decoder_norms' one-pass backward equals torch's vector_norm backward, zero rows included."""
    from clt_bench.clt.model import RowNormFn

    w = torch.randn(6, 3, 4, dtype=torch.float64)
    w[2] = 0.0  # a zero row: no gradient (vector_norm's subgradient)
    g = torch.randn(6, dtype=torch.float64)
    a = w.clone().requires_grad_(True)
    b = w.clone().requires_grad_(True)
    (RowNormFn.apply(a) * g).sum().backward()
    (torch.linalg.vector_norm(b, dim=(1, 2)) * g).sum().backward()
    assert torch.allclose(RowNormFn.apply(w), torch.linalg.vector_norm(w, dim=(1, 2)))
    assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=0) and not a.grad[2].any()
