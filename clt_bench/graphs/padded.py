"""Active features of one CLT layer, grouped by (prompt, position) cell and padded.

The frozen model reads and writes only the active features. Gathering each feature's residual
vector (and scattering its decoder writes) one by one is slow under the batched (vmapped) backward
pass, which then materialises [rows, k, d] tensors per target layer. Grouping the k active
features by cell and padding every cell to ``kmax`` turns both directions into batched matrix
products over the cells (``einsum("qk,qke->qe")`` and its transpose), which BLAS does fast.

Shapes: q = n * pos cells, k features, kmax = most features in one cell, d = d_model,
T = number of layers the layer's features write to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clt_bench.clt.model import CrossLayerTranscoder


class CellMV(torch.autograd.Function):
    """Per-cell matrix-vector product ``out[q] = M[q] @ v[q]`` (or ``M[q]^T @ v[q]``).

    ``M`` [q, a, b] is a constant; ``v`` [q, b] ([q, a] transposed). Its own ``vmap`` rule makes
    the batched backward pass one bmm over cells with the batch rows as columns, instead of the
    default rule, which copies ``M`` once per batch row.
    """

    @staticmethod
    def forward(M: torch.Tensor, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        return torch.einsum("qba,qb->qa" if transpose else "qab,qb->qa", M, v)

    @staticmethod
    def setup_context(
        ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor, bool], output: Any
    ) -> None:
        M, _, transpose = inputs
        ctx.save_for_backward(M)
        ctx.transpose = transpose

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        (M,) = ctx.saved_tensors
        return None, cell_mv(M, grad, not ctx.transpose), None

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        M: torch.Tensor,
        v: torch.Tensor,
        transpose: bool,
    ) -> tuple[torch.Tensor, int]:
        m_dim, v_dim, _ = in_dims
        if m_dim is not None:
            M = M.movedim(m_dim, 0)
            v = v.movedim(v_dim, 0) if v_dim is not None else v.expand(M.shape[0], *v.shape)
            eq = "Bqba,Bqb->Bqa" if transpose else "Bqab,Bqb->Bqa"
            return torch.einsum(eq, M, v), 0
        v = v.movedim(v_dim, 0)  # type: ignore[arg-type]  # vmap batches M or v (or both)
        return torch.einsum("qba,Bqb->Bqa" if transpose else "qab,Bqb->Bqa", M, v), 0


def cell_mv(M: torch.Tensor, v: torch.Tensor, transpose: bool) -> torch.Tensor:
    """``CellMV`` with a type: autograd's ``apply`` has none."""
    out: torch.Tensor = CellMV.apply(M, v, transpose)  # type: ignore[no-untyped-call]
    return out


@dataclass
class PaddedFeatures:
    idx: torch.Tensor  # [k, 3] (prompt, pos, feature), sorted by cell
    slot: torch.Tensor  # [k] position of each feature in the flattened [q * kmax] padding
    kmax: int
    enc: torch.Tensor  # [q, kmax, d] encoder rows (x input_scale), zero padding
    b_enc: torch.Tensor  # [q, kmax]
    dec_t: torch.Tensor  # [q, T * d, kmax] decoders (/ output_scale of each target layer)
    n: int
    pos: int

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """[n, pos, d] resid_mid -> [k] pre-activations of the features."""
        q = self.n * self.pos
        if len(self.idx) == 0:
            return x.new_zeros(0)
        h = cell_mv(self.enc, x.reshape(q, -1), False) + self.b_enc  # [q, kmax]
        return h.reshape(-1).index_select(0, self.slot)

    def writes(self, vals: torch.Tensor) -> torch.Tensor:
        """[k] activations -> [n, pos, T * d] decoder writes into the T target layers."""
        q = self.n * self.pos
        T_d = self.dec_t.shape[1]
        if len(self.idx) == 0:
            return vals.new_zeros(self.n, self.pos, T_d)
        padded = vals.new_zeros(q * self.kmax).index_add(0, self.slot, vals)
        out = cell_mv(self.dec_t, padded.reshape(q, self.kmax), False)  # [q, T * d]
        return out.reshape(self.n, self.pos, T_d)


def pad_features(
    clt: CrossLayerTranscoder, layer: int, idx: torch.Tensor, n: int, pos: int, dtype: torch.dtype
) -> PaddedFeatures:
    """Group the active features ``idx`` [k, 3] of ``layer`` by cell (``idx`` sorted, as from
    ``nonzero()``)."""
    q = n * pos
    d = clt.spec.d_model
    targets = clt.target_layers(layer)
    cell = idx[:, 0] * pos + idx[:, 1]
    if len(idx) > 1 and bool((cell[1:] < cell[:-1]).any()):
        raise ValueError("feature indices must be sorted by (prompt, pos)")
    counts = torch.bincount(cell, minlength=q)
    kmax = max(int(counts.max()) if len(idx) else 0, 1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(idx), device=idx.device) - starts[cell]
    slot = cell * kmax + rank
    f = idx[:, 2]
    with torch.no_grad():
        enc_rows = clt.W_enc[layer].detach().index_select(0, f).to(dtype) * clt.input_scale[
            layer
        ].to(dtype)
        out_scale = clt.output_scale.detach().to(dtype)[targets]  # [T]
        dec_rows = (
            clt.W_dec[layer].detach().index_select(0, f).to(dtype) / out_scale[None, :, None]
        )  # [k, T, d]
        enc = torch.zeros(q * kmax, d, dtype=dtype, device=idx.device)
        enc[slot] = enc_rows
        b = torch.zeros(q * kmax, dtype=dtype, device=idx.device)
        b[slot] = clt.b_enc[layer].detach().to(dtype)[f]
        dec = torch.zeros(q * kmax, len(targets) * d, dtype=dtype, device=idx.device)
        dec[slot] = dec_rows.reshape(len(idx), len(targets) * d)
    return PaddedFeatures(
        idx=idx,
        slot=slot,
        kmax=kmax,
        enc=enc.reshape(q, kmax, d),
        b_enc=b.reshape(q, kmax),
        dec_t=dec.reshape(q, kmax, -1).transpose(1, 2),
        n=n,
        pos=pos,
    )
