"""The training objective (Ameisen et al. 2025, "Circuit Tracing", and its January 2025 update),
as a module so DDP / FSDP2 can wrap its forward.

loss = sum_l MSE_l(ŷ_norm, y_norm)
     + lambda_S(t) * sum_l sum_i tanh(c * ||W_dec,i^l|| * a_i^l)      (jumprelu / relu only)
     + lambda_P * sum_l sum_i relu(theta_i^l - h_i^l) * ||W_dec,i^l||  (jumprelu / relu only)
averaged over tokens. MSE_l is the mean over d_model of the squared error in normalised units.
TopK / BatchTopK fix the sparsity structurally, so they get neither penalty.
"""

from __future__ import annotations

import torch
from torch import nn

from clt_bench.clt import fused
from clt_bench.clt import sparse_decode as SD
from clt_bench.clt.cpu_alloc import keep_freed_memory
from clt_bench.clt.model import CrossLayerTranscoder, JumpReLUFn, active_mask

PENALISED = ("jumprelu", "relu")
# order of the per-step statistics vector returned by ``TrainObjective.forward``
STAT_NAMES = ("loss", "mse", "sparsity", "preact", "l0", "nmse")


class PreactPenaltyFn(torch.autograd.Function):
    """mean over n of sum_f relu(theta_f - pre_nf) * norm_f, saving only ``pre`` (one [n, F]
    tensor; the composed ops kept a second, fp32 one per layer: ~19 GB at seed scale) and doing
    three passes over [n, F] forward and backward (the composed ops: about ten)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, theta: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        gap = (theta - pre).clamp_min_(0.0).sum(0)  # [F] sum over tokens of relu(theta - pre)
        ctx.save_for_backward(pre, theta, norms, gap)
        return (gap.to(norms.dtype) * norms).sum() / pre.shape[0]

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        pre, theta, norms, gap = ctx.saved_tensors
        n = pre.shape[0]
        # -1.0 where pre < theta, else 0.0: a float mask (a bool one and torch.where took ~3x
        # the time on the CPU)
        below = (pre - theta).sign_().clamp_(max=0.0)  # [n, F]
        grad_pre = grad_theta = grad_norms = None
        if ctx.needs_input_grad[1]:
            grad_theta = (g / n) * norms * -below.sum(0, dtype=norms.dtype)
        if ctx.needs_input_grad[0]:
            grad_pre = below.mul_((g / n) * norms).to(pre.dtype)
        if ctx.needs_input_grad[2]:
            grad_norms = (g / n) * gap.to(norms.dtype)
        return grad_pre, grad_theta, grad_norms


class TrainObjective(nn.Module):
    """Wraps a CLT; ``forward(x, y, lambda_s)`` returns (loss, stats, fired).

    ``decoder`` (default: the CLT's ``spec.decoder``): ``dense`` multiplies the full [n, F]
    activations into each decoder; ``sparse`` gathers the decoder rows of the entries whose
    gradient matters (``sparse_decode.grad_support``) and computes the sparsity penalty on those
    entries only (tanh(0) = 0 elsewhere, and elsewhere the pre-activation gets no gradient through
    it); ``auto`` decides per layer and step from the density. Loss and gradients are the same.
    """

    def __init__(
        self,
        clt: CrossLayerTranscoder,
        lambda_p: float,
        tanh_c: float,
        decoder: str | None = None,
        fuse: str = "auto",
    ) -> None:
        super().__init__()
        self.clt = clt
        self.lambda_p, self.tanh_c = lambda_p, tanh_c
        self.decoder = decoder or clt.spec.decoder
        if self.decoder not in SD.DECODERS:
            raise ValueError(f"unknown decoder '{self.decoder}'")
        self.fuse = fused.check_mode(fuse)  # clt.fuse (clt_bench.clt.fused)
        if clt.b_dec.device.type == "cpu":
            keep_freed_memory()

    def _sparse_entries(
        self, pre: torch.Tensor, theta: torch.Tensor | None
    ) -> tuple[SD.SparseRows, torch.Tensor] | None:
        """pre [n, F] -> (the entries that matter, their activations [nnz]); None: go dense."""
        spec = self.clt.spec
        n, F = pre.shape
        kind = spec.activation
        if kind in PENALISED:
            mask = SD.grad_support(pre, kind, theta, spec.bandwidth)
            # count_nonzero: a third of the time of a bool sum on the CPU
            auto = self.decoder == "auto"
            if auto and not SD.use_sparse("auto", int(mask.count_nonzero()), n * F, pre.device):
                return None
            rows = SD.SparseRows.from_mask(mask)
            h = pre.reshape(-1)[rows.flat]
            if kind == "jumprelu":
                return rows, JumpReLUFn.apply(h, theta[rows.cols], spec.bandwidth)
            return rows, torch.relu(h)
        k = min(spec.k, F) if kind == "topk" else min(spec.k * n, n * F)
        if not SD.use_sparse(self.decoder, k * (n if kind == "topk" else 1), n * F, pre.device):
            return None
        r = torch.relu(pre)
        if kind == "topk":
            rows = SD.SparseRows.from_topk(r.topk(k, dim=-1).indices, F)
        else:  # batchtopk: the top k * n of the layer across the batch
            top = r.reshape(-1).topk(k)
            rows = SD.SparseRows(top.indices.sort().values, n, F)
            # the cut, for the trainer's running inference threshold (as ``clt.activate`` does)
            self.clt._batch_kth.append(top.values[-1:].detach().float())
        return rows, r.reshape(-1)[rows.flat]

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, lambda_s: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, y [n, L, d] raw -> loss (scalar), stats [len(STAT_NAMES)], fired [L, F] counts.

        The same function as ``clt(x)`` followed by the penalties, computed layer by layer with
        2-D matmuls (about twice as fast on CPU as the batched einsums of ``clt.forward``).
        """
        clt = self.clt
        L, F = clt.n_layers, clt.spec.n_features
        n = x.shape[0]
        kind = clt.spec.activation
        penalised = kind in PENALISED
        xs = (x * clt.input_scale[:, None].to(x.dtype)).transpose(0, 1)  # [L, n, d]
        ys = y * clt.output_scale[:, None].to(y.dtype)  # [n, L, d] normalised targets
        theta = clt.threshold if kind == "jumprelu" else None
        norms = clt.decoder_norms() if penalised else None  # [L, F]
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        sparsity, preact = zero, zero
        fired, contribs = [], []
        impl = fused.resolve(self.fuse, x.device) if kind == "jumprelu" else None
        # per-layer views by unbind: its backward stacks the layers' gradients once, where
        # indexing W_enc[l] made autograd zero-fill and add a full [L, F, d] gradient per layer
        # (12 x 37 MB per step at L12 d768 F1024)
        w_enc, b_enc = clt.W_enc.unbind(0), clt.b_enc.unbind(0)
        for l in range(L):
            pre = torch.addmm(b_enc[l], xs[l], w_enc[l].T)  # [n, F]
            th = theta[l] if theta is not None else None
            w = clt.W_dec[l]  # [F, T, d]
            picked = None if self.decoder == "dense" else self._sparse_entries(pre, th)
            if picked is not None:
                rows, vals = picked
                contribs.append(SD.sparse_contrib(vals, rows, w))
                if penalised and lambda_s > 0:
                    s_l = torch.tanh(self.tanh_c * norms[l][rows.cols] * vals).sum() / n
                    sparsity = sparsity + s_l
                fired.append(torch.bincount(rows.cols[vals > 0], minlength=F))
            elif impl is not None:  # JumpReLU, both penalties and the counts in one function
                assert th is not None and norms is not None
                acts, s_l, p_l, f_l = fused.fused_jumprelu(
                    pre, th, norms[l], self.tanh_c, clt.spec.bandwidth, impl
                )
                contribs.append(SD.dense_contrib(acts, w))
                if lambda_s > 0:
                    sparsity = sparsity + s_l
                if self.lambda_p > 0:
                    preact = preact + p_l
                fired.append(f_l.long())
                continue  # the pre-activation penalty is in already
            else:
                if kind == "jumprelu":
                    acts = JumpReLUFn.apply(pre, th, clt.spec.bandwidth)
                elif kind == "relu":
                    acts = torch.relu(pre)
                else:
                    acts = clt.activate(pre[:, None, :])[:, 0, :]  # topk / batchtopk, one layer
                contribs.append(SD.dense_contrib(acts, w))
                if penalised and lambda_s > 0:
                    sparsity = sparsity + torch.tanh(self.tanh_c * norms[l] * acts).sum(-1).mean()
                fired.append(active_mask(acts.detach().clone()).sum(0).long())
            if penalised and self.lambda_p > 0:
                t = th if th is not None else torch.zeros_like(norms[l])
                preact = preact + PreactPenaltyFn.apply(pre, t, norms[l])
        y_hat = SD.scatter_targets(clt.b_dec, list(range(L)), contribs)  # [n, L, d]
        if clt.W_skip is not None:
            y_hat = y_hat + torch.bmm(xs, clt.W_skip).transpose(0, 1)
        mse_l = (y_hat - ys).pow(2).mean(dim=(0, 2))  # [L]
        mse = mse_l.sum()
        loss = mse + lambda_s * sparsity + self.lambda_p * preact
        with torch.no_grad():
            fired_t = torch.stack(fired)  # [L, F]
            var = (ys - ys.mean(0, keepdim=True)).pow(2).mean(dim=(0, 2))
            nmse = (mse_l / var.clamp_min(1e-12)).mean()
            stats = torch.stack(
                [
                    loss.detach(),
                    mse.detach(),
                    sparsity.detach(),
                    preact.detach(),
                    fired_t.sum().to(mse.dtype) / n,
                    nmse,
                ]
            )
        return loss, stats, fired_t
