"""Seeded random CLTs: a baseline with no learned structure, for benchmarks and tests.

``random_clt`` draws unit-norm encoder rows and small random decoders. With ``calibrate_on``
(resid_mid samples [N, L, d]) each feature's bias or threshold is set so that it fires on about
``rate`` of those samples (at least two), which gives realistic sparsity for any model.
"""

from __future__ import annotations

import torch

from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder


@torch.no_grad()
def random_clt(
    n_layers: int,
    d_model: int,
    n_features: int,
    activation: str = "jumprelu",
    *,
    cross_layer: bool = True,
    skip: bool = False,
    k: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    calibrate_on: torch.Tensor | None = None,
    rate: float = 0.05,
    decoder_scale: float = 0.1,
) -> CrossLayerTranscoder:
    """A random CLT/PLT of the given shape (``cross_layer=False`` gives a PLT)."""
    spec = CLTSpec(
        n_layers=n_layers,
        d_model=d_model,
        n_features=n_features,
        activation=activation,
        k=k,
        cross_layer=cross_layer,
        skip=skip,
    )
    clt = CrossLayerTranscoder(spec, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    W = randn(n_layers, n_features, d_model)
    clt.W_enc.copy_(W / W.norm(dim=-1, keepdim=True))
    for layer in range(n_layers):
        n_t = clt.n_targets(layer)
        clt.W_dec[layer].copy_(randn(n_features, n_t, d_model) * decoder_scale / d_model**0.5)
    clt.b_dec.copy_(randn(n_layers, d_model) * decoder_scale / d_model**0.5)
    if clt.W_skip is not None:
        clt.W_skip.copy_(randn(n_layers, d_model, d_model) * decoder_scale / d_model)
    cut = torch.ones(n_layers, n_features, dtype=torch.float64)
    if calibrate_on is not None and calibrate_on.shape[0] >= 2:
        h = torch.einsum("nld,lfd->nlf", calibrate_on.double(), clt.W_enc.double())
        k = min(max(int(round((1.0 - rate) * h.shape[0])), 1), h.shape[0] - 1)
        lo, hi = h.kthvalue(k, dim=0).values, h.kthvalue(k + 1, dim=0).values
        cut = (lo + hi) / 2  # [L, F]: fires on ~rate of the samples, never exactly at a sample
    if activation in ("jumprelu", "batchtopk"):  # BatchTopK infers with a learned threshold
        clt.log_threshold.copy_(cut.clamp(min=1e-3).log())
    elif activation == "relu":
        clt.b_enc.copy_(-cut)
    else:  # topk / batchtopk: keep the bias near the threshold so the top-k are positive
        clt.b_enc.copy_(-0.5 * cut.clamp(min=0))
    return clt
