"""The training objective (SPEC-clt.md §2), as a module so DDP / FSDP2 can wrap its forward.

loss = sum_l MSE_l(ŷ_norm, y_norm)
     + lambda_S(t) * sum_l sum_i tanh(c * ||W_dec,i^l|| * a_i^l)      (jumprelu / relu only)
     + lambda_P * sum_l sum_i relu(theta_i^l - h_i^l) * ||W_dec,i^l||  (jumprelu / relu only)
averaged over tokens. MSE_l is the mean over d_model of the squared error in normalised units.
TopK / BatchTopK fix the sparsity structurally, so they get neither penalty.
"""

from __future__ import annotations

import torch
from torch import nn

from clt_bench.clt.model import CrossLayerTranscoder

PENALISED = ("jumprelu", "relu")
# order of the per-step statistics vector returned by ``TrainObjective.forward``
STAT_NAMES = ("loss", "mse", "sparsity", "preact", "l0", "nmse")


def sparsity_penalty(acts: torch.Tensor, dec_norms: torch.Tensor, c: float) -> torch.Tensor:
    """acts [n, L, F], dec_norms [L, F] -> mean over n of sum tanh(c * ||W_dec|| * a); scalar."""
    return torch.tanh(c * dec_norms * acts).sum(dim=(-2, -1)).mean()


def preact_penalty(pre: torch.Tensor, theta: torch.Tensor, dec_norms: torch.Tensor
                   ) -> torch.Tensor:
    """pre [n, L, F], theta [L, F] (or scalar 0), dec_norms [L, F] -> mean over n; scalar."""
    return (torch.relu(theta - pre) * dec_norms).sum(dim=(-2, -1)).mean()


def mse_per_layer(y_hat_norm: torch.Tensor, y_norm: torch.Tensor) -> torch.Tensor:
    """[n, L, d] x2 -> [L] mean squared error per layer (mean over tokens and d_model)."""
    return (y_hat_norm - y_norm).pow(2).mean(dim=(0, 2))


class TrainObjective(nn.Module):
    """Wraps a CLT; ``forward(x, y, lambda_s)`` returns (loss, stats, fired)."""

    def __init__(self, clt: CrossLayerTranscoder, lambda_p: float, tanh_c: float) -> None:
        super().__init__()
        self.clt = clt
        self.lambda_p, self.tanh_c = lambda_p, tanh_c

    def forward(self, x: torch.Tensor, y: torch.Tensor, lambda_s: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, y [n, L, d] raw -> loss (scalar), stats [len(STAT_NAMES)], fired [L, F] counts."""
        clt = self.clt
        pre = clt.pre_activations(x)
        acts = clt.activate(pre)
        s_out = clt.output_scale[:, None].to(y.dtype)
        y_hat_norm = clt.decode(acts, x) * s_out
        y_norm = y * s_out
        mse_l = mse_per_layer(y_hat_norm, y_norm)
        mse = mse_l.sum()
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        sparsity, preact = zero, zero
        if clt.spec.activation in PENALISED:
            norms = clt.decoder_norms()
            theta = clt.threshold if clt.spec.activation == "jumprelu" else zero
            if lambda_s > 0:
                sparsity = sparsity_penalty(acts, norms, self.tanh_c)
            if self.lambda_p > 0:
                preact = preact_penalty(pre, theta, norms)
        loss = mse + lambda_s * sparsity + self.lambda_p * preact
        with torch.no_grad():
            active = acts > 0
            var = (y_norm - y_norm.mean(0)).pow(2).mean(dim=(0, 2))
            nmse = (mse_l / var.clamp_min(1e-12)).mean()
            stats = torch.stack([loss.detach(), mse.detach(), sparsity.detach(), preact.detach(),
                                 active.sum(-1).to(x.dtype).mean(0).sum(), nmse])
            fired = active.sum(0)
        return loss, stats, fired
