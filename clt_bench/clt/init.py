"""Initialisation from data: normalisation scalars and encoder biases for a target firing rate.

Everything is computed from the first global batches on every rank alike, so single-process and
multi-process runs start from identical weights.
"""

from __future__ import annotations

import math

import torch

from clt_bench.clt.model import CrossLayerTranscoder


@torch.no_grad()
def estimate_scales(
    xs: list[torch.Tensor], ys: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches of [n, L, d] -> (input_scale [L], output_scale [L]) with E||s * v|| = sqrt(d)."""
    d = xs[0].shape[-1]
    x_norm = torch.cat([x.double().norm(dim=-1) for x in xs]).mean(0)  # [L]
    y_norm = torch.cat([y.double().norm(dim=-1) for y in ys]).mean(0)
    return (math.sqrt(d) / x_norm.clamp_min(1e-8)).float(), (
        math.sqrt(d) / y_norm.clamp_min(1e-8)
    ).float()


@torch.no_grad()
def initialise(
    clt: CrossLayerTranscoder,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    threshold_init: float,
    init_rate: float,
    dec_init_scale: float,
) -> None:
    """Seeded init; x, y [n, L, d] raw (one global batch) set b_enc and b_dec.

    W_enc ~ U(+-1/sqrt(d)); b_enc so that each feature's pre-activation exceeds its threshold on
    a fraction ``init_rate`` of the batch; W_dec ~ U(+-dec_init_scale / sqrt(F * targets));
    b_dec = mean normalised target; JumpReLU thresholds = ``threshold_init``.

    The random draws come from a generator on the CLT's device: fp64 on the CPU; on a GPU in the
    weights' dtype, since drawing the ~1.1B weights of the gpt2 preset on the host took most of
    a minute. So a CUDA run starts from other (equally distributed) weights than a CPU run.
    """
    dev = clt.W_enc.device
    g = torch.Generator(device=dev).manual_seed(seed)
    spec = clt.spec
    L, F, d = spec.n_layers, spec.n_features, spec.d_model
    dtype = clt.W_enc.dtype
    draw_dtype = torch.float64 if dev.type == "cpu" else dtype

    def uniform(shape: tuple[int, ...], bound: float) -> torch.Tensor:
        r = torch.rand(shape, generator=g, dtype=draw_dtype, device=dev)
        return ((r * 2 - 1) * bound).to(dtype)

    clt.W_enc.copy_(uniform((L, F, d), 1 / math.sqrt(d)))
    for layer, w in enumerate(clt.W_dec):
        w.copy_(uniform(tuple(w.shape), dec_init_scale / math.sqrt(F * clt.n_targets(layer))))
    if clt.W_skip is not None:
        clt.W_skip.zero_()
    theta = threshold_init if spec.activation == "jumprelu" else 0.0
    clt.log_threshold.fill_(math.log(max(threshold_init, 1e-8)))
    clt.b_enc.zero_()
    x, y = x.to(clt.W_enc.device, dtype), y.to(clt.W_enc.device, dtype)
    if spec.activation in ("jumprelu", "relu") and 0 < init_rate < 1:
        n = x.shape[0]
        k = min(n, max(1, math.ceil((1 - init_rate) * n)))
        for layer in range(L):  # one layer at a time keeps memory at [n, F]
            pre = x[:, layer] @ clt.W_enc[layer].T  # [n, F] pre-activations with b_enc = 0
            pre = (pre * clt.input_scale[layer]).T.contiguous()  # [F, n]
            # [F] the (1 - rate) quantile = the k-th smallest = the (n - k + 1)-th largest
            # (topk along the contiguous dim: same value as kthvalue, several times faster)
            q = pre.topk(n - k + 1, dim=1).values[:, -1]
            clt.b_enc[layer].copy_(theta - q)
    clt.b_dec.copy_((y * clt.output_scale[:, None]).mean(0))
