"""CLT decoding that touches only the active feature rows, and the slab layout both paths share.

Target layer t's output is ``b_dec[t] + sum_{s <= t} a_s @ W_dec[s][:, t - s]``; with L0 ~100 of
tens of thousands of features the dense product multiplies mostly zeros, so the sparse path
gathers the decoder rows of the (token, feature) entries that matter and sums them per token with
``F.embedding_bag`` (forward and both gradients are fused kernels; nothing [n, F, T * d] is
materialised). An entry matters where its gradient is non-zero: the feature is active (h > theta)
or, for JumpReLU's threshold, inside the straight-through window |h - theta| < bandwidth / 2
(Rajamanoharan et al. 2024, eq. 11): ``grad_support``. Loss and gradients equal the dense path's.

Layout: source layer s writes the contiguous slab ``y[:, s:s + T]`` of ``y`` [n, L, d];
``ScatterTargets`` adds each source's [n, T * d] contribution there and hands each source a
*view* of the output gradient (slicing made autograd zero-fill a [n, T, d] gradient per target).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as Fn

DECODERS = ("dense", "sparse", "auto")
# auto: decode sparsely when at most this fraction of (token, feature) entries matters. Measured
# crossovers of the fused gather against a dense matmul (fp32 CPU ~5 %; see benchmarks/RESULTS.md).
AUTO_MAX_DENSITY = {"cpu": 0.04, "cuda": 0.01}
CSR_DEVICES = ("cpu",)  # fp32/fp64 there: MKL's CSR kernels; elsewhere embedding_bag


def grad_support(
    pre: torch.Tensor, activation: str, theta: torch.Tensor | None, bandwidth: float
) -> torch.Tensor:
    """[..., F] pre-activations -> bool mask of the entries whose decoder gradient is needed.

    JumpReLU: active (h > theta) or inside the threshold's straight-through window, i.e.
    h > theta - bandwidth / 2. ReLU: h > 0. (TopK / BatchTopK select their entries directly.)
    """
    if activation == "jumprelu":
        return pre > theta - bandwidth / 2
    return pre > 0


class SparseRows:
    """The selected entries of one source layer: ``flat`` indices into [n, F] (row-major,
    sorted), their feature ``cols`` and the per-token ``offsets`` of ``F.embedding_bag``."""

    def __init__(self, flat: torch.Tensor, n: int, n_features: int) -> None:
        self.flat = flat
        self.cols = flat % n_features
        starts = torch.arange(n, device=flat.device, dtype=flat.dtype) * n_features
        self.offsets = torch.searchsorted(flat, starts)  # [n] first entry of each token

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> SparseRows:
        """mask [n, F] bool -> its True entries."""
        n, F = mask.shape
        return cls(mask.reshape(-1).nonzero().squeeze(1), n, F)

    @classmethod
    def from_topk(cls, idx: torch.Tensor, n_features: int) -> SparseRows:
        """idx [n, k] feature indices (any order per row) -> the entries, sorted per token."""
        n = idx.shape[0]
        rows = torch.arange(n, device=idx.device)[:, None] * n_features
        flat = (rows + idx).reshape(-1).sort().values
        return cls(flat, n, n_features)

    @property
    def nnz(self) -> int:
        return self.flat.numel()


def compute_dtype(w: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for ``w``'s device (bf16 training), else w's."""
    kind = w.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return w.dtype


def _sparse_csr(
    crow: torch.Tensor, col: torch.Tensor, vals: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    with warnings.catch_warnings():  # "CSR support is in beta": the kernels used here are stable
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # the indices come sorted and in range from ``SparseRows``: no invariant checks
        return torch.sparse_csr_tensor(crow, col, vals, size=size, check_invariants=False)


def _csr(rows: SparseRows, vals: torch.Tensor, n: int, n_features: int) -> torch.Tensor:
    end = torch.tensor([rows.nnz], dtype=rows.offsets.dtype, device=vals.device)
    return _sparse_csr(torch.cat([rows.offsets, end]), rows.cols, vals, (n, n_features))


def _csr_t(rows: SparseRows, vals: torch.Tensor, n: int, n_features: int) -> torch.Tensor:
    """The [F, n] transpose of the entries as CSR (sorted by feature, stable)."""
    order = torch.argsort(rows.cols, stable=True)
    counts = torch.bincount(rows.cols, minlength=n_features)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    tok = torch.div(rows.flat, n_features, rounding_mode="floor")
    return _sparse_csr(crow, tok[order], vals[order], (n_features, n))


class CSRDecode(torch.autograd.Function):
    """CPU: vals [nnz] at ``rows``, w2 [F, T * d] -> [n, T * d] with MKL's sparse kernels, about
    twice as fast there as ``embedding_bag``: forward A @ w2, grad_w2 = A^T @ g, grad_vals =
    (g @ w2^T) sampled at the entries (SDDMM, no dense [n, F] product)."""

    @staticmethod
    def forward(
        ctx, vals: torch.Tensor, w2: torch.Tensor, rows: SparseRows, n: int
    ) -> torch.Tensor:
        ctx.save_for_backward(vals, w2)
        ctx.rows, ctx.n = rows, n
        return _csr(rows, vals, n, w2.shape[0]) @ w2

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        vals, w2 = ctx.saved_tensors
        rows, n, F = ctx.rows, ctx.n, w2.shape[0]
        g = g.contiguous()
        grad_vals = grad_w2 = None
        if ctx.needs_input_grad[0]:
            pattern = _csr(rows, torch.ones_like(vals), n, F)
            grad_vals = torch.sparse.sampled_addmm(pattern, g, w2.T, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            grad_w2 = _csr_t(rows, vals, n, F) @ g
        return grad_vals, grad_w2, None, None


def sparse_contrib(vals: torch.Tensor, rows: SparseRows, w: torch.Tensor) -> torch.Tensor:
    """vals [nnz] activations at ``rows``, w [F, T, d] decoder -> [n, T * d] contribution.

    sum_k vals[k] * w[cols[k]] per token, in the autocast dtype when autocast is on (the gather
    is memory-bound: half the bytes in bf16); gradients flow to ``vals`` and ``w``.
    """
    cdt = compute_dtype(w)
    if cdt == torch.bfloat16 and w.device.type == "cuda":
        # CUDA has no bf16 kernel for embedding_bag's per-sample-weight gradient; gathering the
        # fp32 master rows also skips autocast's copy of the whole decoder to bf16
        cdt = torch.float32 if w.dtype == torch.bfloat16 else w.dtype
    w2 = w.reshape(w.shape[0], -1).to(cdt)
    if w.device.type in CSR_DEVICES and cdt in (torch.float32, torch.float64):
        return CSRDecode.apply(vals.to(cdt), w2, rows, rows.offsets.shape[0])
    return Fn.embedding_bag(
        rows.cols, w2, rows.offsets, mode="sum", per_sample_weights=vals.to(cdt)
    )


def dense_contrib(acts: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """acts [n, F], w [F, T, d] -> [n, T * d] (the reference: one matmul per source layer)."""
    return acts @ w.reshape(w.shape[0], -1)


class ScatterTargets(torch.autograd.Function):
    """y [n, L, d] = b_dec + each source's [n, T_s * d] contribution added into y[:, s:s + T_s].

    Backward returns views of grad_y (no per-target zero-filled [n, T, d] buffers) and
    grad_b_dec = grad_y summed over tokens.
    """

    @staticmethod
    def forward(
        ctx, b_dec: torch.Tensor, starts: tuple[int, ...], *contribs: torch.Tensor
    ) -> torch.Tensor:
        L, d = b_dec.shape
        n = contribs[0].shape[0]
        dtype = torch.promote_types(b_dec.dtype, contribs[0].dtype)
        y = b_dec.to(dtype).expand(n, L, d).clone()
        for s, c in zip(starts, contribs, strict=True):
            t = c.shape[1] // d
            y[:, s : s + t].view(n, t * d).add_(c)
        ctx.starts, ctx.widths = starts, [c.shape[1] for c in contribs]
        ctx.dtypes = [c.dtype for c in contribs]
        ctx.b_dtype = b_dec.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        n, L, d = grad_y.shape
        grads = []
        for s, w, dt in zip(ctx.starts, ctx.widths, ctx.dtypes, strict=True):
            g = grad_y[:, s : s + w // d].reshape(n, w)  # a view: rows of stride L * d
            grads.append(g if g.dtype == dt else g.to(dt))
        grad_b = grad_y.sum(0).to(ctx.b_dtype) if ctx.needs_input_grad[0] else None
        return (grad_b, None, *grads)


def scatter_targets(
    b_dec: torch.Tensor, starts: list[int], contribs: list[torch.Tensor]
) -> torch.Tensor:
    """b_dec [L, d], per-source contributions [n, T_s * d] at target offsets ``starts`` ->
    y [n, L, d]."""
    return ScatterTargets.apply(b_dec, tuple(starts), *contribs)


def use_sparse(mode: str, nnz: int, numel: int, device: torch.device) -> bool:
    """Decide dense vs sparse for one source layer (``auto``: by the density that matters)."""
    if mode == "sparse":
        return True
    if mode == "dense":
        return False
    if device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        # bf16: the dense matmul beats the gather (no bf16 embedding_bag gradient kernel; at the
        # gpt2 preset's shape 0.16 s vs 0.31 s a step on an H100, benchmarks/RESULTS.md)
        return False
    return nnz <= AUTO_MAX_DENSITY.get(device.type, 0.01) * numel


def decode_sparse(
    b_dec: torch.Tensor,
    w_dec: list[torch.Tensor],
    acts: torch.Tensor,
    starts: list[int],
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """acts [n, L, F] -> [n, L, d] normalised decoder output (no skip), gathering only the rows of
    ``keep`` ([n, L, F] bool; default acts != 0). Gradients w.r.t. acts are exact at ``keep``
    entries and zero elsewhere."""
    n, L, F = acts.shape
    contribs = []
    for s in range(L):
        a = acts[:, s]
        rows = SparseRows.from_mask(a != 0 if keep is None else keep[:, s])
        vals = a.reshape(-1)[rows.flat]
        contribs.append(sparse_contrib(vals, rows, w_dec[s]))
    return scatter_targets(b_dec, starts, contribs)
