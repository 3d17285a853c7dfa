"""Attribution rows of the frozen replacement model by its hand-written transpose (GPT-2 blocks).

With attention patterns, LayerNorm scales and feature activations frozen, the replacement model
is affine in its sources, so the gradient of a node value is the transpose of a fixed linear map
applied to the node's read direction. For a GPT-2-style block (pre-LN, attention, MLP replaced by
the CLT's writes + error + skip) that transpose is, from the gradient g at the block's output:

    g_mlp_out = g                                          (feature writes, error, b_dec read it)
    g_mid     = g + (g W_skip^T) * in_scale / out_scale    (the skip connection, if any)
    g_pre     = g_mid + LN1^T(sum_h pattern_h^T g_mid W_O[h]^T W_V[h]^T)
    LN^T(u)   = c(u * w / s)   with c(v) = v - mean_d(v) and s the frozen scale

and a feature row injects its encoder row at its layer's ``resid_mid``, a target row
``LN_final^T(W_U @ direction)`` at the last position. Plain batched matmuls, no autograd and no
hooks: on a small model this is several times faster than differentiating the bridge's forward
pass (``Attributor``, which stays the reference and the path for other architectures; the two are
tested equal in tests/test_graphs_adjoint.py).

Shapes: B rows, P positions (one prompt), d = d_model, H heads, dh = d_head, L layers.
"""

from __future__ import annotations

from typing import Any

import torch

from clt_bench.graphs.edge_weights import RowAttribution, feature_activations
from clt_bench.graphs.local_replacement import ReplacementModel


def supports_adjoint(rm: ReplacementModel) -> bool:
    """Whether ``rm`` is a single prompt on a GPT-2-style bridge (pre-LN LayerNorm blocks,
    sequential attention then MLP, absolute positional embeddings)."""
    cfg = getattr(rm.bridge, "cfg", None)
    if cfg is None or rm.n_prompts != 1:
        return False
    return (
        getattr(cfg, "normalization_type", None) == "LN"
        and getattr(cfg, "positional_embedding_type", None) == "standard"
        and not getattr(cfg, "parallel_attn_mlp", False)
        and not getattr(cfg, "attn_only", False)
        and all(f"blocks.{i}.ln1.hook_scale" in rm.frozen for i in range(rm.n_layers))
    )


def _ln(module: torch.nn.Module) -> Any:
    """The LayerNorm module a bridge component wraps (or ``module`` itself)."""
    return getattr(module, "_original_component", module)


class FrozenAdjoint:
    """The transpose of one prompt's frozen replacement model (see the module docstring)."""

    def __init__(self, rm: ReplacementModel) -> None:
        b, dt, L = rm.bridge, rm.dtype, rm.n_layers
        self.rm, self.L, self.P = rm, L, rm.n_pos
        self.d = int(rm.resid_mid.shape[-1])
        clt = rm.clt
        self.W_V = b.W_V.detach().to(dt)  # [L, H, d, dh]
        self.W_O = b.W_O.detach().to(dt)  # [L, H, dh, d]
        self.pattern = torch.stack(
            [rm.frozen[f"blocks.{i}.attn.hook_pattern"][0] for i in range(L)]
        ).to(dt)  # [L, H, q, k]
        self.ln1 = torch.stack(
            [
                _ln(b.blocks[i].ln1).weight.detach()[None]
                / rm.frozen[f"blocks.{i}.ln1.hook_scale"][0]
                for i in range(L)
            ]
        ).to(dt)  # [L, P, d]: w / s
        lnf = _ln(b.ln_final).weight.detach()[None] / rm.frozen["ln_final.hook_scale"][0]  # [P, d]
        self.lnf_last: torch.Tensor = lnf[-1].to(dt)  # [d]
        self.W_U = b.W_U.detach().to(dt)  # [d, V]
        self._unembed: tuple[torch.Tensor, torch.Tensor] | None = None
        in_s = clt.input_scale.detach().to(dt)
        out_s = clt.output_scale.detach().to(dt)
        self.skip_t = None
        if clt.W_skip is not None:  # adjoint of (x * in_s) @ W_skip / out_s
            self.skip_t = (
                clt.W_skip.detach().to(dt).transpose(1, 2)
                * in_s[:, None, None]
                / out_s[:, None, None]
            )  # [L, d, d]
        self.b_dec = clt.b_dec.detach().to(dt) / out_s[:, None]  # [L, d]
        self.acts = feature_activations(rm)
        # encoder rows (x input_scale) of the clean active features, in feature_table order
        self.enc = torch.cat(
            [
                rm.padded[i].enc.reshape(-1, self.d).index_select(0, rm.padded[i].slot)
                for i in range(L)
            ]
        )  # [K, d]
        self.layer = torch.cat(
            [torch.full((len(rm.active_idx[i]),), i, dtype=torch.long) for i in range(L)]
        ).to(self.enc.device)
        self.pos = torch.cat([rm.active_idx[i][:, 1] for i in range(L)]).to(self.enc.device)

    @torch.no_grad()
    def constants(self, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``constant_terms`` by hand: the frozen forward pass with every source at zero.

        Returns ([K] feature pre-activation constants, [1, n_t] target constants) for
        ``directions`` [n_t, V]: what positional embeddings, b_dec, the skip connection of those,
        attention / LayerNorm / encoder / unembedding biases carry.
        """
        rm, b, dt = self.rm, self.rm.bridge, self.rm.dtype
        x = rm.pos_embed[0]  # [P, d]
        pre = []
        for layer in range(self.L):
            y = (x - x.mean(-1, keepdim=True)) * self.ln1[layer]
            y = y + _ln(b.blocks[layer].ln1).bias.detach().to(dt)
            v = torch.einsum("pd,hde->hpe", y, self.W_V[layer]) + b.b_V[layer].detach()[:, None]
            z = torch.matmul(self.pattern[layer], v)  # [H, P, dh]
            x = x + torch.einsum("hpe,hef->pf", z, self.W_O[layer]) + b.b_O[layer].detach()
            pf = rm.padded[layer]
            pre.append(pf.pre(x[None]) if len(pf.idx) else x.new_zeros(0))
            out = self.b_dec[layer]
            if self.skip_t is not None:
                out = out + x @ self.skip_t[layer].T
            x = x + out
        last = x[-1]
        y = (last - last.mean()) * self.lnf_last + _ln(b.ln_final).bias.detach().to(dt)
        # logits @ D^T = y @ (W_U D^T) + b_U D^T, without the [V] logits
        D = directions.to(dt)
        return torch.cat(pre), (y @ self.unembed(D).T + b.b_U.detach().to(dt) @ D.T)[None]

    def unembed(self, directions: torch.Tensor) -> torch.Tensor:
        """[n_t, V] -> [n_t, d] directions read through the unembedding (computed once)."""
        if self._unembed is None or self._unembed[0] is not directions:
            self._unembed = (directions, directions.to(self.W_U.dtype) @ self.W_U.T)
        return self._unembed[1]

    def target_injection(self, directions: torch.Tensor) -> torch.Tensor:
        """[n_t, V] target directions -> [n_t, d] gradient at the last position's resid_post."""
        u = self.unembed(directions) * self.lnf_last
        return u - u.mean(-1, keepdim=True)

    def _backward(
        self, g: torch.Tensor, inject: dict[int, torch.Tensor], top: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """g [B, P, d] at block ``top``'s output (zero above it); ``inject[l]`` [B, P, d] added
        at resid_mid l. Returns (the gradient at every mlp_out [B, P, L, d], at the embeddings)."""
        g_mlp = g.new_zeros(g.shape[0], self.P, self.L, self.d)
        for layer in range(top, -1, -1):
            g_mlp[:, :, layer] = g
            g_mid = g
            if self.skip_t is not None:
                g_mid = g_mid + g @ self.skip_t[layer]
            if layer in inject:
                g_mid = g_mid + inject[layer]
            # attention with frozen pattern: sum_h pattern_h^T g_mid W_O[h]^T W_V[h]^T
            t = torch.einsum("bqf,hef->bhqe", g_mid, self.W_O[layer])
            t = torch.matmul(self.pattern[layer].transpose(-1, -2), t)  # [B, H, k, dh]
            u = torch.einsum("bhke,hde->bkd", t, self.W_V[layer]) * self.ln1[layer]
            g = g_mid + (u - u.mean(-1, keepdim=True))
        return g_mlp, g

    def rows(self, g_final: torch.Tensor | None, nodes: torch.Tensor | None) -> RowAttribution:
        """Incoming edges of B rows: target rows (``g_final`` [B, d], the target injection at the
        last position) or feature rows (``nodes`` [B], indices into the clean active features)."""
        rm, L, P, d = self.rm, self.L, self.P, self.d
        inject: dict[int, torch.Tensor] = {}
        top = L - 1
        if g_final is not None:
            B = g_final.shape[0]
            g = g_final.new_zeros(B, P, d)
            g[:, -1] = g_final
        else:
            assert nodes is not None
            B = len(nodes)
            g = self.enc.new_zeros(B, P, d)
            nodes = nodes.to(self.enc.device)  # node ids may come from the CPU graph assembly
            rows = torch.arange(B, device=self.enc.device)
            lay, pos = self.layer[nodes], self.pos[nodes]
            for layer in sorted(set(lay.tolist())):
                m = lay == layer
                inj = self.enc.new_zeros(B, P, d)
                inj[rows[m], pos[m]] = self.enc[nodes[m]]
                inject[layer] = inj
            top = max(inject)  # the layers above the highest injection carry no gradient
        gm, g_emb = self._backward(g, inject, top)  # [B, P, L, d], [B, P, d]
        # mlp_out gradients are zero from layer ``top`` up for feature rows (their injection is
        # below that layer's MLP): only writes into layers <= hi carry edges
        hi = L - 1 if g_final is not None else top - 1
        feats = []
        for layer in range(L):
            pf = rm.padded[layer]
            if len(pf.idx) == 0:
                continue
            n_t = min(len(rm.clt.target_layers(layer)), hi - layer + 1)  # targets: layer, ...
            if n_t <= 0:
                feats.append(g.new_zeros(B, len(pf.idx)))
                continue
            g_cat = gm[:, :, layer : layer + n_t].reshape(B, P, -1)
            e = torch.einsum("qak,bqa->bqk", pf.dec_t[:, : n_t * d], g_cat)
            feats.append(e.reshape(B, -1).index_select(1, pf.slot))
        feat = torch.cat(feats, 1) * self.acts if feats else g.new_zeros(B, 0)
        errors = (gm * rm.errors[0]).sum(-1).transpose(1, 2)  # [B, L, P]
        b_dec = (gm.sum(1) * self.b_dec).sum((-1, -2))
        return RowAttribution(
            features=feat,
            errors=errors[:, None],
            tokens=(g_emb * rm.embed[0]).sum(-1)[:, None],
            pos_embed=(g_emb * rm.pos_embed[0]).sum((-1, -2))[:, None],
            b_dec=b_dec[:, None],
        )
