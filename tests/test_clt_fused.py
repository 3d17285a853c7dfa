"""clt.fuse: JumpReLU's fused epilogue equals the composed ops (loss, statistics, firing counts
and every gradient, fp32 to 1e-5 relative; bf16 autocast to bf16 rounding)."""

from __future__ import annotations

import pytest
import torch
from test_clt_sparse import _close, _clt, _grads

from clt_bench.clt import fused
from clt_bench.clt.losses import TrainObjective
from clt_bench.config import load_config
from clt_bench.errors import UserError


def _pair(cross: bool, skip: bool, mode: str, lambda_p: float = 0.01):
    ref = TrainObjective(_clt("jumprelu", cross, skip).train(), lambda_p, 4.0, "dense", "off")
    new = TrainObjective(_clt("jumprelu", cross, skip).train(), lambda_p, 4.0, "dense", mode)
    return ref, new


@pytest.mark.parametrize(("cross", "skip"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_fused_equals_composed(cross, skip, lam):
    x, y = torch.randn(64, 3, 8) * 2, torch.randn(64, 3, 8)
    ref, new = _pair(cross, skip, "eager")
    s_r, f_r, g_r = _grads(ref, x, y, lam)
    s_n, f_n, g_n = _grads(new, x, y, lam)
    _close(s_n, s_r, "stats")
    assert torch.equal(f_n, f_r)
    assert g_n.keys() == g_r.keys()
    for k in g_r:
        _close(g_n[k], g_r[k], k)
    # every term is exercised: the window and the penalty move theta, the decoder norms get the
    # penalties' gradient, and some entries fire
    assert float(g_r["clt.log_threshold"].abs().sum()) > 0
    assert 0 < float(s_r[4]) < 3 * 40


def test_fused_without_preact_penalty_and_in_micro_batches():
    from clt_bench.clt.train import forward_backward
    from clt_bench.config import CLTConfig

    x, y = torch.randn(96, 3, 8), torch.randn(96, 3, 8)
    ref, new = _pair(True, False, "eager", lambda_p=0.0)
    out = []
    for obj, fuse in ((ref, "off"), (new, "eager")):
        obj.zero_grad(set_to_none=True)
        cfg = CLTConfig(micro_batch_tokens=40, decoder="dense", fuse=fuse)
        stats, fired, _ = forward_backward(obj, obj.clt, x, y, 0.02, cfg, "cpu")
        out.append((stats, fired, {k: p.grad.clone() for k, p in obj.named_parameters()}))
    (s_r, f_r, g_r), (s_n, f_n, g_n) = out
    _close(s_n, s_r, "stats")
    assert torch.equal(f_n, f_r)
    for k in g_r:
        _close(g_n[k], g_r[k], k)


def test_fused_under_bf16_autocast():
    """bf16 pre-activations: the same gradients as the composed ops up to bf16 rounding."""
    x, y = torch.randn(64, 3, 8) * 2, torch.randn(64, 3, 8)
    ref, new = _pair(True, True, "eager")
    res = []
    for obj in (ref, new):
        obj.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16):
            loss, stats, fired = obj(x, y, 0.05)
        loss.backward()
        res.append((stats, fired, {k: p.grad.clone() for k, p in obj.named_parameters()}))
    (s_r, f_r, g_r), (s_n, f_n, g_n) = res
    torch.testing.assert_close(s_n, s_r, rtol=2e-2, atol=1e-3)
    assert torch.equal(f_n, f_r)
    for k in g_r:
        scale = float(g_r[k].abs().max())
        torch.testing.assert_close(g_n[k], g_r[k], rtol=2e-2, atol=2e-2 * scale, msg=k)


def test_modes_resolve_by_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fused.resolve("auto", cpu) is None and fused.resolve("off", cuda) is None
    assert fused.resolve("eager", cpu) is fused._EAGER
    assert fused.resolve("compile", cpu) is fused._COMPILED
    with pytest.raises(ValueError, match="unknown fuse mode"):
        fused.resolve("fast", cpu)
    with pytest.raises(UserError, match="fuse"):
        load_config("toy", ['clt.fuse="fast"'])


@pytest.mark.slow
def test_compiled_equals_eager():
    """torch.compile of the fused functions (inductor's C++ backend here, Triton on CUDA)."""
    x, y = torch.randn(64, 3, 8) * 2, torch.randn(64, 3, 8)
    ref, new = _pair(True, True, "compile")
    s_r, f_r, g_r = _grads(ref, x, y, 0.05)
    s_n, f_n, g_n = _grads(new, x, y, 0.05)
    _close(s_n, s_r, "stats")
    assert torch.equal(f_n, f_r)
    for k in g_r:
        _close(g_n[k], g_r[k], k)


def test_failed_compilation_runs_eagerly(monkeypatch, caplog):
    """No Triton / no C compiler on a GPU machine: one warning, then the eager functions."""

    def broken(fn, **kw):
        def run(*a):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    impl = fused._Impl(compiled=True)
    pre, theta, norms = torch.randn(6, 5), torch.rand(5), torch.rand(5)
    with caplog.at_level("WARNING"):
        out = fused.fused_jumprelu(pre.requires_grad_(), theta, norms, 4.0, 0.1, impl)
    ref = fused._forward(pre.detach(), theta, norms, 4.0)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[3], ref[4])
    assert "runs eagerly" in caplog.text and impl.compiled is False
    out[0].sum().backward()  # the backward too (eager now)
    assert pre.grad is not None
