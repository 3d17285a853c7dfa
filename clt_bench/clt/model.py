"""The cross-layer transcoder module (Ameisen et al. 2025, "Circuit Tracing"; docs/architecture.md).

Layer l's encoder reads the raw residual stream before the MLP (``blocks.l.hook_resid_mid``);
each feature of layer l has a decoder to every layer l' >= l (``blocks.l'.hook_mlp_out``).
A per-layer transcoder (PLT) is the same module with ``cross_layer=False``: decoders only to the
feature's own layer. An optional linear skip connection maps x^l straight to y^l.

Shapes: L layers, F features per layer, d = d_model.
- ``W_enc`` [L, F, d], ``b_enc`` [L, F], ``threshold`` [L, F] (JumpReLU; log-parametrised)
- ``W_dec[l]`` [F, L - l, d] for a CLT (``[F, 1, d]`` for a PLT), ``b_dec`` [L, d]
- ``W_skip`` [L, d, d] (optional)
Inputs are raw model activations unless ``input_scale`` / ``output_scale`` are set: during
training those hold the normalisation; ``fold_normalisation`` folds them into the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from clt_bench.clt import sparse_decode as SD

ACTIVATIONS = ("jumprelu", "topk", "batchtopk", "relu")


@dataclass(frozen=True)
class CLTSpec:
    n_layers: int
    d_model: int
    n_features: int  # per layer
    activation: str = "jumprelu"
    k: int = 32
    cross_layer: bool = True
    skip: bool = False
    bandwidth: float = 1.0  # JumpReLU straight-through rectangle kernel width (input units)
    decoder: str = "auto"  # dense | sparse | auto (clt_bench.clt.sparse_decode)

    def to_dict(self) -> dict:
        return asdict(self)


class JumpReLUFn(torch.autograd.Function):
    """a = h * 1[h > theta]; d a / d theta via a rectangle kernel of width ``bandwidth``.

    The masks are float {0, 1} tensors from ``sign`` (h > theta <=> sign(h - theta) = 1, exactly
    in IEEE arithmetic): on the CPU a comparison into a bool tensor and ``torch.where`` on it
    take 2-4x the time of a float pass, and this runs on every [n, F] pre-activation twice a step.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(h, theta)
        ctx.bandwidth = bandwidth
        return active_mask(h - theta).to(h.dtype).mul_(h)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        d = h - theta
        grad_theta = None
        if ctx.needs_input_grad[1]:
            # rectangle kernel window |h - theta| < eps / 2 <=> eps / 2 - |h - theta| > 0
            near = active_mask(d.abs().neg_().add_(eps / 2)).mul_(grad_out)
            if near.dim() > theta.dim():
                near = near.reshape(-1, *theta.shape).sum(0)
            grad_theta = -(theta / eps) * near  # sum of -theta / eps * K * grad_out
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_h = active_mask(d).mul_(grad_out).to(h.dtype)
        return grad_h, grad_theta, None


def active_mask(d: torch.Tensor) -> torch.Tensor:
    """1.0 where d > 0, else 0.0 (NaN stays NaN), in place on ``d``: sign, then clamp."""
    return d.sign_().clamp_(min=0.0)


class RowNormFn(torch.autograd.Function):
    """w [F, ...] -> [F] the L2 norm of each row. Backward is one pass over w (g / norm * w);
    ``vector_norm``'s own backward makes three (divide, multiply, mask the zero norms): ~0.1 s
    of a 2.3 s training step over the 250 MB of decoders at L12 d768 F1024 on one CPU core."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())))
        ctx.save_for_backward(w, norm)
        return norm

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        w, norm = ctx.saved_tensors
        scale = torch.where(norm > 0, g / norm, 0.0)  # [F]; a zero row gets no gradient
        return w * scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype)


def _row_norm(w: torch.Tensor) -> torch.Tensor:
    """[F, T, d] -> [F]; sharded (DTensor) parameters keep torch's own norm and backward."""
    if type(w.data) is torch.Tensor:
        return RowNormFn.apply(w)
    return torch.linalg.vector_norm(w, dim=(1, 2))


class CrossLayerTranscoder(nn.Module):
    """A CLT (or PLT). ``forward(x)`` maps [batch, L, d] resid_mid to [batch, L, d] mlp_out."""

    input_scale: torch.Tensor  # [L] buffers (registered in __init__)
    output_scale: torch.Tensor

    def __init__(self, spec: CLTSpec, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if spec.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{spec.activation}'")
        if spec.decoder not in SD.DECODERS:
            raise ValueError(f"unknown decoder '{spec.decoder}' (known: {', '.join(SD.DECODERS)})")
        self.spec = spec
        L, F, d = spec.n_layers, spec.n_features, spec.d_model
        self.W_enc = nn.Parameter(torch.zeros(L, F, d, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(L, F, dtype=dtype))
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.zeros(F, self.n_targets(l), d, dtype=dtype)) for l in range(L)]
        )
        self.b_dec = nn.Parameter(torch.zeros(L, d, dtype=dtype))
        self.log_threshold = nn.Parameter(
            torch.zeros(L, F, dtype=dtype), requires_grad=spec.activation == "jumprelu"
        )
        self.W_skip = nn.Parameter(torch.zeros(L, d, d, dtype=dtype)) if spec.skip else None
        # normalisation: x_norm = x * input_scale[l]; y = y_norm / output_scale[l]  (1 = folded)
        self.register_buffer("input_scale", torch.ones(L, dtype=dtype))
        self.register_buffer("output_scale", torch.ones(L, dtype=dtype))
        # BatchTopK in training mode: the k*B-th largest value of each layer per call, for the
        # trainer's running threshold (``pop_batch_kth``)
        self._batch_kth: list[torch.Tensor] = []
        # built for inference (BatchTopK uses its learned threshold); the trainer calls .train()
        self.eval()

    # ----- structure -------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    def n_targets(self, layer: int) -> int:
        """How many layers feature of ``layer`` writes to."""
        return self.spec.n_layers - layer if self.spec.cross_layer else 1

    def target_layers(self, layer: int) -> list[int]:
        return list(range(layer, layer + self.n_targets(layer)))

    @property
    def threshold(self) -> torch.Tensor:
        """[L, F] JumpReLU thresholds (in the units of the (normalised) pre-activation)."""
        return self.log_threshold.exp()

    # ----- encoder ---------------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L, d] resid_mid -> [..., L, F] encoder pre-activations."""
        x = x * self.input_scale[:, None].to(x.dtype)
        return torch.einsum("...ld,lfd->...lf", x, self.W_enc) + self.b_enc

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """[..., L, F] pre-activations -> feature activations.

        BatchTopK has one inference rule: in eval mode (the default) a feature fires when its
        pre-activation exceeds the layer's threshold learned in training (a running mean of the
        batch-wide k*B-th largest value, Bussmann et al. 2024), per token, whatever the batch;
        only in training mode does it keep the top k*B of the batch (like BatchNorm's batch vs
        running statistics).
        """
        kind = self.spec.activation
        if kind == "batchtopk" and not self.training:
            return h * (h > self.threshold)
        if kind == "relu":
            return torch.relu(h)
        if kind == "jumprelu":
            return JumpReLUFn.apply(h, self.threshold, self.spec.bandwidth)
        if kind == "topk":
            k = min(self.spec.k, h.shape[-1])
            vals, idx = torch.relu(h).topk(k, dim=-1)
            return torch.zeros_like(h).scatter(-1, idx, vals)
        # batchtopk: keep the top (k * batch) activations of each layer across the flattened batch
        flat = torch.relu(h).reshape(-1, h.shape[-2], h.shape[-1])  # [B, L, F]
        B = flat.shape[0]
        k = min(self.spec.k * B, B * h.shape[-1])
        per_layer = flat.transpose(0, 1).reshape(h.shape[-2], -1)  # [L, B*F]
        vals, idx = per_layer.topk(k, dim=-1)
        self._batch_kth.append(vals[:, -1].detach().float())  # [L] this batch's cut per layer
        kept = torch.zeros_like(per_layer).scatter(-1, idx, vals)
        return kept.reshape(h.shape[-2], B, h.shape[-1]).transpose(0, 1).reshape(h.shape)

    def pop_batch_kth(self) -> torch.Tensor | None:
        """[L] the BatchTopK cut of each layer recorded since the last call (None if none)."""
        if not self._batch_kth:
            return None
        out = torch.cat(self._batch_kth)
        self._batch_kth.clear()
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L, d] resid_mid -> [..., L, F] feature activations."""
        return self.activate(self.pre_activations(x))

    # ----- decoder ---------------------------------------------------------------------------
    def decode(
        self, acts: torch.Tensor, x: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[..., L, F] activations (+ resid_mid for the skip) -> [..., L, d] mlp_out estimate.

        ``keep`` ([..., L, F] bool) marks the entries whose gradient is needed (default: the
        non-zero ones). ``spec.decoder`` picks the dense reference or the sparse gather
        (``auto``: sparse when few entries are kept, but never when ``acts`` needs a gradient
        and no ``keep`` says where).
        """
        if self._decode_sparse(acts, keep):
            lead, (L, F) = acts.shape[:-2], acts.shape[-2:]
            kp = None if keep is None else keep.reshape(-1, L, F)
            y = SD.decode_sparse(
                self.b_dec, list(self.W_dec), acts.reshape(-1, L, F), list(range(L)), kp
            ).reshape(*lead, L, -1)
        else:
            y = self._decode_dense(acts)
        if self.W_skip is not None and x is not None:
            xn = x * self.input_scale[:, None].to(x.dtype)
            y = y + torch.einsum("...ld,lde->...le", xn, self.W_skip)
        return y / self.output_scale[:, None].to(y.dtype)

    def _decode_sparse(self, acts: torch.Tensor, keep: torch.Tensor | None) -> bool:
        mode = self.spec.decoder
        if mode != "auto" or acts.numel() == 0:
            return mode == "sparse" and acts.numel() > 0
        if keep is None and acts.requires_grad and torch.is_grad_enabled():
            return False
        nnz = int((acts != 0).sum() if keep is None else keep.sum())
        return SD.use_sparse(mode, nnz, acts.numel(), acts.device)

    def _decode_dense(self, acts: torch.Tensor) -> torch.Tensor:
        """The reference decoder (no skip, normalised units): one einsum per source layer."""
        L = self.n_layers
        outs: list[torch.Tensor] = [self.b_dec[l].expand(*acts.shape[:-2], -1) for l in range(L)]
        for src in range(L):
            contrib = torch.einsum("...f,ftd->...td", acts[..., src, :], self.W_dec[src])
            for j, tgt in enumerate(self.target_layers(src)):
                outs[tgt] = outs[tgt] + contrib[..., j, :]
        return torch.stack(outs, dim=-2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., L, d] resid_mid -> (mlp_out estimate [..., L, d], activations [..., L, F])."""
        pre = self.pre_activations(x)
        acts = self.activate(pre)
        kind = self.spec.activation
        if kind in ("jumprelu", "relu"):
            theta = self.threshold if kind == "jumprelu" else None
            keep = SD.grad_support(pre, kind, theta, self.spec.bandwidth)
        else:
            keep = acts != 0  # TopK / BatchTopK: the selected entries (others have no gradient)
        return self.decode(acts, x, keep), acts

    def decoder_norms(self) -> torch.Tensor:
        """[L, F] norm of each feature's decoder vectors to all its target layers, concatenated."""
        return torch.stack([_row_norm(w) for w in self.W_dec])

    def layer_decoder(self, src: int, tgt: int) -> torch.Tensor:
        """[F, d] decoder of layer ``src`` features into layer ``tgt`` (in raw output units)."""
        j = tgt - src
        if j < 0 or j >= self.n_targets(src):
            raise IndexError(f"layer {src} features do not write to layer {tgt}")
        return self.W_dec[src][:, j, :] / self.output_scale[tgt]

    # ----- normalisation ---------------------------------------------------------------------
    @torch.no_grad()
    def fold_normalisation(self) -> None:
        """Fold ``input_scale``/``output_scale`` into the weights so raw inputs give raw outputs.

        JumpReLU thresholds and pre-activations keep their scale: W_enc absorbs the input scale, so
        pre-activations are unchanged; decoders (and b_dec, W_skip) absorb 1 / output_scale.
        """
        s_in, s_out = self.input_scale.clone(), self.output_scale.clone()
        self.W_enc.mul_(s_in[:, None, None])
        for src in range(self.n_layers):
            tg = torch.tensor(self.target_layers(src), device=s_out.device)
            self.W_dec[src].div_(s_out[tg][None, :, None])
        self.b_dec.div_(s_out[:, None])
        if self.W_skip is not None:
            self.W_skip.mul_(s_in[:, None, None]).div_(s_out[:, None, None])
        self.input_scale.fill_(1.0)
        self.output_scale.fill_(1.0)
