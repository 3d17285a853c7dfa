"""JumpReLU's per-layer training epilogue in one function: activation, both penalties and the
firing counts, forward and backward.

The composed ops pass over each layer's [n, F] pre-activations about thirty times a step and keep
an fp32 tanh output per layer; at the seed study's shape those passes, not the matmuls, are most
of an H100's step (benchmarks/RESULTS.md). Here each direction reads ``pre`` once and saves only
``pre``: compiled (``torch.compile``), a couple of fused kernels; eager, the reference the tests
hold against the composed ops. ``clt.fuse``: ``auto`` (compiled on CUDA, the composed ops
elsewhere), ``compile``, ``eager`` or ``off``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

FUSE_MODES = ("auto", "compile", "eager", "off")


def _forward(
    pre: torch.Tensor, theta: torch.Tensor, norms: torch.Tensor, c: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """pre [n, F] (any float dtype), theta / norms [F] fp32 -> (acts [n, F] in pre's dtype,
    sum of tanh(c * norms * acts), sum over tokens of relu(theta - pre) [F], the penalty's
    sum (gap * norms), firing counts [F])."""
    h = pre.float()
    on = h > theta
    acts = h * on  # NaN stays NaN (the trainer's guard sees it)
    tanh_sum = torch.tanh(c * norms * acts).sum()
    gap = (theta - h).clamp_min(0.0).sum(0)
    fired = (acts > 0).sum(0)
    return acts.to(pre.dtype), tanh_sum, gap, (gap * norms).sum(), fired


def _backward(
    pre: torch.Tensor,
    theta: torch.Tensor,
    norms: torch.Tensor,
    gap: torch.Tensor,
    g_acts: torch.Tensor,
    g_s: torch.Tensor,
    g_p: torch.Tensor,
    c: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (acts, s = tanh_sum / n, p = penalty / n) -> (pre, theta, norms).

    acts: d/dpre = 1[pre > theta]; d/dtheta = -theta / eps on |pre - theta| < eps / 2 (the
    rectangle kernel of ``JumpReLUFn``), applied to the whole gradient reaching acts (the
    decoder's and the sparsity term's). s: d/dacts = c norms (1 - tanh^2) / n, d/dnorms =
    c acts (1 - tanh^2) / n. p: d/dpre = -norms / n where pre < theta, d/dtheta = +norms / n
    there, d/dnorms = gap / n.
    """
    n = pre.shape[0]
    h = pre.float()
    d = h - theta
    on = d > 0
    acts = h * on
    t = torch.tanh(c * norms * acts)
    dt = 1.0 - t * t
    gs, gp = g_s / n, g_p / n
    g = g_acts.float() + gs * c * norms * dt  # everything that reaches acts
    near = d.abs() < eps / 2
    below = d < 0
    grad_pre = g * on - below * (gp * norms)
    grad_theta = -(theta / eps) * (g * near).sum(0) + gp * norms * below.sum(0)
    grad_norms = gs * c * (acts * dt).sum(0) + gp * gap
    return grad_pre.to(pre.dtype), grad_theta, grad_norms


class _Impl:
    """The forward and backward functions, compiled on first use when asked. A compilation that
    fails (no Triton, no C compiler for its launcher, ...) is logged once and the eager
    functions run instead: the same numbers, more passes over memory."""

    def __init__(self, compiled: bool) -> None:
        self.compiled = compiled
        self._fns: dict[str, Callable] = {}
        self._ok: set[str] = set()

    def __call__(self, which: str, *args):
        eager = _forward if which == "fwd" else _backward
        if not self.compiled:
            return eager(*args)
        fn = self._fns.get(which)
        if fn is None:
            fn = self._fns[which] = torch.compile(eager, dynamic=False)
        if which in self._ok:
            return fn(*args)
        try:
            out = fn(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure: run eagerly
            log.warning(
                "torch.compile of the fused JumpReLU epilogue failed (%s: %s); it runs eagerly",
                type(err).__name__,
                str(err).splitlines()[0][:200] if str(err) else "",
            )
            self.compiled = False
            return eager(*args)
        self._ok.add(which)
        return out


_EAGER, _COMPILED = _Impl(False), _Impl(True)


class FusedJumpReLU(torch.autograd.Function):
    """(pre, theta, norms) -> (acts, s, p, fired): acts = pre 1[pre > theta], s = mean over tokens
    of sum tanh(c norms acts), p = mean over tokens of sum relu(theta - pre) norms, fired = the
    firing counts [F] (no gradient). Saves ``pre`` and one [F] vector."""

    @staticmethod
    def forward(ctx, pre, theta, norms, c: float, eps: float, impl: _Impl):  # type: ignore[override]
        acts, tanh_sum, gap, pen, fired = impl("fwd", pre, theta, norms, c)
        ctx.save_for_backward(pre, theta, norms, gap)
        ctx.c, ctx.eps, ctx.impl = c, eps, impl
        ctx.mark_non_differentiable(fired)
        n = pre.shape[0]
        return acts, tanh_sum / n, pen / n, fired

    @staticmethod
    def backward(ctx, g_acts, g_s, g_p, _g_fired):  # type: ignore[override]
        pre, theta, norms, gap = ctx.saved_tensors
        grad_pre, grad_theta, grad_norms = ctx.impl(
            "bwd", pre, theta, norms, gap, g_acts, g_s, g_p, ctx.c, ctx.eps
        )
        return grad_pre, grad_theta, grad_norms, None, None, None


def check_mode(mode: str) -> str:
    if mode not in FUSE_MODES:
        raise ValueError(f"unknown fuse mode '{mode}' (one of {', '.join(FUSE_MODES)})")
    return mode


def resolve(mode: str, device: torch.device) -> _Impl | None:
    """The implementation ``clt.fuse = mode`` picks on ``device`` (None: the composed ops)."""
    return _resolve(mode, device.type)


@functools.cache  # once per (mode, device type): the triton check (and its warning) per process
def _resolve(mode: str, device_type: str) -> _Impl | None:
    if check_mode(mode) == "off" or (mode == "auto" and device_type != "cuda"):
        return None
    if mode == "eager":
        return _EAGER
    if mode == "auto":
        try:
            import triton  # noqa: F401  (torch.compile's GPU code generator)
        except ImportError:
            log.warning("clt.fuse = 'auto': triton is not installed, so the epilogue is not fused")
            return None
    return _COMPILED


def fused_jumprelu(
    pre: torch.Tensor, theta: torch.Tensor, norms: torch.Tensor, c: float, eps: float, impl: _Impl
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``FusedJumpReLU`` on one layer: (acts [n, F], s, p, fired [F])."""
    return FusedJumpReLU.apply(pre, theta, norms, c, eps, impl)
