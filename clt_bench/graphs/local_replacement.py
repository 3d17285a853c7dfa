"""The local replacement model (docs/methods.md#graphs) on a TransformerLens bridge.

``build_replacement`` runs the clean prompt(s) once and caches everything the frozen model needs:
attention patterns, every LayerNorm denominator (``hook_scale``), the residual stream before each
MLP, the MLP outputs, the CLT's activations and the error nodes ``e = mlp_out - CLT(resid_mid)``.

``run_frozen`` replays the prompt through the bridge with patterns and LayerNorm scales replaced by
the cached values and every MLP output replaced by ``feature writes + b_dec + skip + error``.
With the error nodes it reproduces the clean logits (up to rounding). Feature layers run in one of
three modes:

- ``frozen``: activations are constants (the clean ones, or ``acts`` if given). The model is then
  affine in its sources (token embeddings, feature activations, error nodes); the gradient with
  respect to a source is its *direct* effect (one edge of the attribution graph).
- ``linear``: a = mask * h(x) with the clean active mask; gradients are *total* effects (all paths
  through the frozen model and the linearised features).
- ``live``: a = sigma(h(x)) is recomputed (interventions), except entries in ``clamp``.

Gradient leaves (zeros added at the embeddings, positional embeddings, each MLP output and each
active feature's activation) let one backward pass read every source's gradient at once; they can
be passed in, so that ``torch.func.vjp`` can differentiate the whole frozen forward pass.

Shapes: n prompts, pos positions, L layers, F features per layer, d = d_model, V = vocabulary;
k_l active features of layer l over all prompts (index rows (prompt, pos, feature)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.errors import UserError
from clt_bench.graphs.padded import PaddedFeatures, pad_features
from clt_bench.models.bridge import FwdHooks, HookFn, mlps_replaced

MODES = ("frozen", "linear", "live")


@dataclass
class ReplacementModel:
    """Cached clean run of ``tokens`` [n, pos] through ``bridge`` with ``clt``."""

    bridge: TransformerBridge
    clt: CrossLayerTranscoder
    tokens: torch.Tensor  # [n, pos]
    frozen: dict[str, torch.Tensor]  # hook name -> pattern [n, head, q, k] / scale [n, pos, 1]
    embed: torch.Tensor  # [n, pos, d]
    pos_embed: torch.Tensor  # [n, pos, d]
    resid_mid: torch.Tensor  # [n, pos, L, d]
    mlp_out: torch.Tensor  # [n, pos, L, d]
    pre_acts: torch.Tensor  # [n, pos, L, F]
    acts: torch.Tensor  # [n, pos, L, F]
    errors: torch.Tensor  # [n, pos, L, d]
    logits: torch.Tensor  # [n, V] clean logits at the last position
    active_idx: list[torch.Tensor] = field(default_factory=list)  # per layer [k_l, 3]
    padded: dict[int, PaddedFeatures] = field(default_factory=dict)  # the clean active sets

    @property
    def n_layers(self) -> int:
        return int(self.resid_mid.shape[2])

    @property
    def n_prompts(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.resid_mid.dtype

    def active_values(self, layer: int, which: str = "acts") -> torch.Tensor:
        """[k_l] clean activations (or pre-activations) of layer ``layer``'s active features."""
        src = self.acts if which == "acts" else self.pre_acts
        i, p, f = self.active_idx[layer].unbind(-1)
        return src[i, p, layer, f]


@dataclass
class FrozenRun:
    """Outputs of one frozen forward pass, with the gradient leaves if requested."""

    logits: torch.Tensor  # [n, V] at the last position
    pre: list[torch.Tensor]  # per layer [k_l]: pre-activations of the clean active features
    embed_leaf: torch.Tensor | None = None  # [n, pos, d]
    pos_leaf: torch.Tensor | None = None  # [n, pos, d]
    mlp_leaves: list[torch.Tensor] = field(default_factory=list)  # per layer [n, pos, d]
    feat_leaves: list[torch.Tensor] = field(default_factory=list)  # per layer [k_l]


def _hook_names(n_layers: int) -> tuple[list[str], list[str]]:
    per_layer = ("attn.hook_pattern", "ln1.hook_scale", "ln2.hook_scale")
    frozen = [f"blocks.{i}.{h}" for i in range(n_layers) for h in per_layer]
    acts = [f"blocks.{i}.hook_{h}" for i in range(n_layers) for h in ("resid_mid", "mlp_out")]
    return ["ln_final.hook_scale", *frozen], ["hook_embed", "hook_pos_embed", *acts]


def _check_shapes(bridge: TransformerBridge, clt: CrossLayerTranscoder) -> None:
    L, d = int(bridge.cfg.n_layers), int(bridge.cfg.d_model)
    if (clt.spec.n_layers, clt.spec.d_model) != (L, d):
        raise UserError(
            f"the CLT has {clt.spec.n_layers} layers of width {clt.spec.d_model} but the model has "
            f"{L} layers of width {d}."
        )


@torch.no_grad()
def encode_prompts(
    clt: CrossLayerTranscoder, resid_mid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, pos, L, d] -> (pre-activations, activations) [n, pos, L, F], one prompt at a time.

    Encoding prompt by prompt keeps BatchTopK's batch (the prompt's positions) independent of how
    many prompts are attributed together.
    """
    pre, acts = [], []
    for x in resid_mid.to(clt.W_enc.dtype):
        h = clt.pre_activations(x)
        pre.append(h)
        acts.append(clt.activate(h))
    return torch.stack(pre).to(resid_mid.dtype), torch.stack(acts).to(resid_mid.dtype)


@torch.no_grad()
def build_replacement(
    bridge: TransformerBridge, clt: CrossLayerTranscoder, tokens: torch.Tensor
) -> ReplacementModel:
    """Run ``tokens`` ([pos] or [n, pos]) once and cache the frozen quantities and error nodes."""
    _check_shapes(bridge, clt)
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise UserError("the prompt tokens must be a non-empty [n, pos] tensor.")
    n_ctx = int(getattr(bridge.cfg, "n_ctx", tokens.shape[1]) or tokens.shape[1])
    if tokens.shape[1] > n_ctx:
        raise UserError(
            f"the prompt has {tokens.shape[1]} tokens; the model reads at most {n_ctx}."
        )
    device = next(bridge.parameters()).device
    tokens = tokens.to(device)
    L = int(bridge.cfg.n_layers)
    frozen_names, act_names = _hook_names(L)
    wanted = set(frozen_names + act_names)
    logits, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    resid_mid = torch.stack([cache[f"blocks.{i}.hook_resid_mid"] for i in range(L)], dim=2)
    mlp_out = torch.stack([cache[f"blocks.{i}.hook_mlp_out"] for i in range(L)], dim=2)
    pre, acts = encode_prompts(clt, resid_mid)
    recon = clt.decode(acts.to(clt.W_enc.dtype), resid_mid.to(clt.W_enc.dtype)).to(mlp_out.dtype)
    rm = ReplacementModel(
        bridge=bridge,
        clt=clt,
        tokens=tokens,
        frozen={n: cache[n].detach().clone() for n in frozen_names},
        embed=cache["hook_embed"].detach().clone(),
        pos_embed=cache["hook_pos_embed"].detach().clone(),
        resid_mid=resid_mid,
        mlp_out=mlp_out,
        pre_acts=pre,
        acts=acts,
        errors=mlp_out - recon,
        logits=logits[:, -1].detach().clone(),
    )
    rm.active_idx = [acts[:, :, layer].nonzero() for layer in range(L)]
    n, P = tokens.shape
    rm.padded = {
        layer: pad_features(clt, layer, rm.active_idx[layer], n, P, rm.dtype) for layer in range(L)
    }
    return rm


def zero_leaves(rm: ReplacementModel) -> list[torch.Tensor]:
    """Zero source leaves for ``run_frozen``: per layer [k_l], per MLP [n, pos, d], embed, pos."""
    z = torch.zeros(
        rm.n_prompts, rm.n_pos, rm.resid_mid.shape[-1], dtype=rm.dtype, device=rm.embed.device
    )
    feats = [torch.zeros(len(i), dtype=rm.dtype, device=z.device) for i in rm.active_idx]
    return feats + [z.clone() for _ in range(rm.n_layers)] + [z.clone(), z.clone()]


class _Weights(NamedTuple):
    """CLT weights in the model's dtype (views when the dtypes agree)."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    W_skip: torch.Tensor | None
    in_scale: torch.Tensor
    out_scale: torch.Tensor

    @classmethod
    def of(cls, clt: CrossLayerTranscoder, dtype: torch.dtype) -> _Weights:
        skip = None if clt.W_skip is None else clt.W_skip.detach().to(dtype)
        return cls(
            clt.W_enc.detach().to(dtype),
            clt.b_enc.detach().to(dtype),
            clt.b_dec.detach().to(dtype),
            skip,
            clt.input_scale.detach().to(dtype),
            clt.output_scale.detach().to(dtype),
        )


def layer_activate(clt: CrossLayerTranscoder, layer: int, h: torch.Tensor) -> torch.Tensor:
    """Activation function of layer ``layer`` on [..., F] pre-activations (BatchTopK over ...)."""
    full = torch.zeros(
        *h.shape[:-1], clt.n_layers, h.shape[-1], dtype=clt.W_enc.dtype, device=h.device
    )
    full[..., layer, :] = h.to(full.dtype)
    return clt.activate(full)[..., layer, :].to(h.dtype)


@dataclass(repr=False)  # TransformerLens names each hook by its repr: never format the tensors
class _FrozenPass:
    """One ``run_frozen`` pass: its inputs, and the state its hooks share (the decoder writes
    pending for each later MLP output, each layer's resid_mid)."""

    rm: ReplacementModel
    modes: list[str]
    acts: torch.Tensor  # [n, pos, L, F]
    clamp: torch.Tensor | None  # [n, pos, L, F] bool
    embed: torch.Tensor  # [n, pos, d]
    errors: torch.Tensor  # [n, pos, L, d]
    leaves: list[torch.Tensor]  # ``zero_leaves`` order, or none
    run: FrozenRun
    w: _Weights
    pending: list[torch.Tensor] = field(default_factory=list)  # per layer [n, pos, d]
    resid: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer [n, pos, d]

    def padded(self, layer: int, idx: torch.Tensor) -> PaddedFeatures:
        rm = self.rm
        if idx is rm.active_idx[layer] and layer in rm.padded:  # the clean set: built once
            return rm.padded[layer]
        return pad_features(rm.clt, layer, idx, rm.n_prompts, rm.n_pos, rm.dtype)

    def active(
        self, layer: int, x: torch.Tensor, pre: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [k, 3], values [k]) of the features ``layer`` writes with, by its mode."""
        rm, mode = self.rm, self.modes[layer]
        if mode == "linear":
            return rm.active_idx[layer], pre
        if mode == "frozen":
            if self.acts is rm.acts:
                return rm.active_idx[layer], rm.active_values(layer)
            a = self.acts[:, :, layer]
        else:  # live
            w = self.w
            h = torch.einsum("npd,fd->npf", x * w.in_scale[layer], w.W_enc[layer])
            a = layer_activate(rm.clt, layer, h + w.b_enc[layer])
            if self.clamp is not None:
                a = torch.where(self.clamp[:, :, layer], self.acts[:, :, layer], a)
        widx = a.nonzero()
        return widx, a[widx[:, 0], widx[:, 1], widx[:, 2]]

    def resid_mid(self, layer: int, x: torch.Tensor, hook: Any) -> torch.Tensor:
        """Read the features of ``layer`` off resid_mid and add their writes to ``pending``."""
        rm, run = self.rm, self.run
        self.resid[layer] = x
        idx = rm.active_idx[layer]
        pre = run.pre[layer] = self.padded(layer, idx).pre(x)
        widx, base = self.active(layer, x, pre)
        vals = base
        if self.leaves and self.modes[layer] != "live" and widx is idx:
            vals = base + self.leaves[layer]
        out = self.padded(layer, widx).writes(vals).reshape(rm.n_prompts, rm.n_pos, -1, x.shape[-1])
        for j, tgt in enumerate(rm.clt.target_layers(layer)):
            self.pending[tgt] = self.pending[tgt] + out[:, :, j]
        return x

    def mlp_out(self, layer: int, y: torch.Tensor, hook: Any) -> torch.Tensor:
        """The MLP output: pending feature writes + b_dec + skip + error (+ its leaf)."""
        w, x = self.w, self.resid[layer]
        out = self.pending[layer] + w.b_dec[layer] / w.out_scale[layer] + self.errors[:, :, layer]
        if w.W_skip is not None:
            out = out + (x * w.in_scale[layer]) @ w.W_skip[layer] / w.out_scale[layer]
        if self.leaves:
            out = out + self.leaves[self.rm.n_layers + layer]
        return out

    def hooks(self) -> FwdHooks:
        rm, L = self.rm, self.rm.n_layers

        def const(name: str) -> HookFn:
            return lambda t, hook: rm.frozen[name]

        def embed(t: torch.Tensor, hook: Any) -> torch.Tensor:
            return self.embed + self.leaves[2 * L] if self.leaves else self.embed

        def pos_embed(t: torch.Tensor, hook: Any) -> torch.Tensor:
            return rm.pos_embed + self.leaves[2 * L + 1] if self.leaves else rm.pos_embed

        hooks: FwdHooks = [(name, const(name)) for name in rm.frozen]
        hooks += [("hook_embed", embed), ("hook_pos_embed", pos_embed)]
        for layer in range(L):
            hooks.append((f"blocks.{layer}.hook_resid_mid", partial(self.resid_mid, layer)))
            hooks.append((f"blocks.{layer}.hook_mlp_out", partial(self.mlp_out, layer)))
        return hooks


def run_frozen(
    rm: ReplacementModel,
    *,
    modes: str | Sequence[str] = "frozen",
    acts: torch.Tensor | None = None,
    clamp: torch.Tensor | None = None,
    embed: torch.Tensor | None = None,
    errors: torch.Tensor | None = None,
    leaves: Sequence[torch.Tensor] | bool | None = None,
) -> FrozenRun:
    """One forward pass of the frozen replacement model; see the module docstring.

    ``modes``: one mode for all layers or one per layer. ``acts`` [n, pos, L, F]: activations for
    ``frozen`` layers (default: clean) and clamp values for ``live`` layers where ``clamp``
    [n, pos, L, F] (bool) is set. ``embed`` [n, pos, d] and ``errors`` [n, pos, L, d] replace the
    token embeddings and error nodes. ``leaves``: tensors added at the sources (``zero_leaves``
    order: one [k_l] per layer for the clean active features, one [n, pos, d] per MLP output, the
    token and the positional embeddings), or True for fresh zero leaves that require grad.
    """
    L = rm.n_layers
    modes = [modes] * L if isinstance(modes, str) else list(modes)
    if len(modes) != L or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be one of {MODES} per layer ({L} layers)")
    dt = rm.dtype
    if leaves is True:
        leaves = [t.requires_grad_(True) for t in zero_leaves(rm)]
    leaves = list(leaves or [])
    if leaves and len(leaves) != 2 * L + 2:
        raise ValueError("leaves must hold 2 * n_layers + 2 tensors (see zero_leaves)")
    run = FrozenRun(logits=torch.empty(0), pre=[torch.empty(0)] * L)
    if leaves:
        run.feat_leaves, run.mlp_leaves = leaves[:L], leaves[L : 2 * L]
        run.embed_leaf, run.pos_leaf = leaves[2 * L], leaves[2 * L + 1]
    embed = rm.embed if embed is None else embed.to(dt)
    frozen_pass = _FrozenPass(
        rm=rm,
        modes=modes,
        acts=rm.acts if acts is None else acts.to(dt),
        clamp=clamp,
        embed=embed,
        errors=rm.errors if errors is None else errors.to(dt),
        leaves=leaves,
        run=run,
        w=_Weights.of(rm.clt, dt),
        pending=[
            torch.zeros(
                rm.n_prompts, rm.n_pos, rm.resid_mid.shape[-1], dtype=dt, device=embed.device
            )
            for _ in range(L)
        ],
    )
    with mlps_replaced(rm.bridge):  # every MLP output is the pass's own (``mlp_out``)
        run.logits = rm.bridge.run_with_hooks(rm.tokens, fwd_hooks=frozen_pass.hooks())[:, -1]
    return run
