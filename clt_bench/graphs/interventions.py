"""Interventions on CLT features, each returning the change in any target: ``constrained_patch``
clamps features in the local replacement model (other features of the ``constrained`` layers
keep their clean activations, the rest are recomputed by the CLT; Anthropic's "constrained
patching"), ``free_patch`` changes their decoder writes in the real, unfrozen model. An
``Intervention`` sets an activation to ``value`` or scales the clean one by ``scale`` (x0
ablates, x-1 flips).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.errors import UserError
from clt_bench.graphs.local_replacement import ReplacementModel, layer_activate, run_frozen
from clt_bench.models.bridge import FwdHooks, HookFn


@dataclass(frozen=True)
class Intervention:
    """Set feature (layer, pos, feature) to ``value``, or to ``scale`` x its activation."""

    layer: int
    pos: int
    feature: int
    value: float | None = None
    scale: float | None = None

    def new(self, current: torch.Tensor) -> torch.Tensor:
        if self.value is not None and self.scale is None:
            return torch.full_like(current, self.value)
        if self.scale is not None and self.value is None:
            return current * self.scale
        raise UserError("an intervention sets exactly one of a value or a scale (x0, x-1).")


def parse_intervention(text: str) -> Intervention:
    """ "layer:pos:feature=VALUE" with VALUE a number or x<scale> (e.g. "1:12:345=x0")."""
    try:
        where, how = text.split("=")
        layer, pos, feat = (int(v) for v in where.split(":"))
        if how.startswith("x"):
            return Intervention(layer, pos, feat, scale=float(how[1:]))
        return Intervention(layer, pos, feat, value=float(how))
    except ValueError as err:
        raise UserError(
            f"intervention '{text}' is not of the form layer:pos:feature=VALUE or "
            f"=x<scale> (e.g. 1:12:345=x0)."
        ) from err


@dataclass
class PatchResult:
    """Logits at the last position and target values before and after an intervention."""

    logits_before: torch.Tensor  # [V]
    logits_after: torch.Tensor  # [V]
    target_before: torch.Tensor  # [n_t]
    target_after: torch.Tensor  # [n_t]

    @property
    def delta(self) -> torch.Tensor:
        """[n_t] change of each target."""
        return self.target_after - self.target_before


def _check(interventions: Sequence[Intervention], n_layers: int, n_pos: int, n_feat: int) -> None:
    if not interventions:
        raise UserError("give at least one feature to intervene on.")
    for iv in interventions:
        if not (0 <= iv.layer < n_layers and -n_pos <= iv.pos < n_pos and 0 <= iv.feature < n_feat):
            raise UserError(
                f"feature {iv.layer}:{iv.pos}:{iv.feature} is outside the model "
                f"({n_layers} layers, {n_pos} positions, {n_feat} features)."
            )


def _result(
    before: torch.Tensor, after: torch.Tensor, directions: torch.Tensor | None
) -> PatchResult:
    if directions is None:
        directions = torch.zeros(0, before.shape[-1])
    D = directions.to(before.dtype).to(before.device)
    return PatchResult(before.detach(), after.detach(), (D @ before).detach(), (D @ after).detach())


@torch.no_grad()
def constrained_patch(
    rm: ReplacementModel,
    interventions: Sequence[Intervention],
    directions: torch.Tensor | None = None,
    constrained_layers: Sequence[int] | None = None,
) -> PatchResult:
    """Clamp features in the frozen replacement model of ``rm``'s first prompt.

    ``directions`` [n_t, V]: the targets to read. ``constrained_layers``: layers whose other
    features keep their clean activations (default: all layers, the fully frozen local model).
    """
    L, P, F = rm.n_layers, rm.n_pos, rm.acts.shape[-1]
    _check(interventions, L, P, F)
    layers = set(range(L) if constrained_layers is None else constrained_layers)
    acts = rm.acts.clone()
    clamp = torch.zeros_like(acts, dtype=torch.bool)
    for iv in interventions:
        pos = iv.pos % P
        acts[0, pos, iv.layer, iv.feature] = iv.new(rm.acts[0, pos, iv.layer, iv.feature])
        clamp[0, pos, iv.layer, iv.feature] = True
    modes = ["frozen" if layer in layers else "live" for layer in range(L)]
    run = run_frozen(rm, modes=modes, acts=acts, clamp=clamp)
    return _result(rm.logits[0], run.logits[0], directions)


@torch.no_grad()
def free_patch(
    bridge: TransformerBridge,
    clt: CrossLayerTranscoder,
    tokens: torch.Tensor,
    interventions: Sequence[Intervention],
    directions: torch.Tensor | None = None,
) -> PatchResult:
    """Change features' decoder writes in the real (unfrozen) model; ``tokens`` [pos]."""
    if tokens.dim() == 1:
        tokens = tokens[None]
    L, P = clt.n_layers, tokens.shape[1]
    _check(interventions, L, P, clt.spec.n_features)
    dev = next(bridge.parameters()).device
    tokens = tokens.to(dev)
    before = bridge(tokens)[0, -1]
    delta: dict[Intervention, torch.Tensor] = {}

    def read(layer: int) -> HookFn:
        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            xs = x.to(clt.W_enc.dtype) * clt.input_scale[layer]
            h = xs @ clt.W_enc[layer].T + clt.b_enc[layer]
            a = layer_activate(clt, layer, h[0])  # [pos, F] (this prompt's BatchTopK batch)
            for iv in interventions:
                if iv.layer == layer:
                    cur = a[iv.pos % P, iv.feature]
                    delta[iv] = iv.new(cur) - cur
            return x

        return fn

    def write(layer: int) -> HookFn:
        def fn(y: torch.Tensor, hook: Any) -> torch.Tensor:
            y = y.clone()
            for iv in interventions:
                if layer in clt.target_layers(iv.layer):
                    dec = clt.layer_decoder(iv.layer, layer)[iv.feature]
                    y[0, iv.pos % P] += (delta[iv] * dec).to(y.dtype)
            return y

        return fn

    src_layers = sorted({iv.layer for iv in interventions})
    hooks: FwdHooks = [(f"blocks.{layer}.hook_resid_mid", read(layer)) for layer in src_layers]
    tgt_layers = sorted({t for iv in interventions for t in clt.target_layers(iv.layer)})
    hooks += [(f"blocks.{layer}.hook_mlp_out", write(layer)) for layer in tgt_layers]
    after = bridge.run_with_hooks(tokens, fwd_hooks=hooks)[0, -1]
    return _result(before, after, directions)
