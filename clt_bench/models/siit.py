"""Interchange interventions on a Hugging Face GPT-2 module, for (strict) interchange training.

SIIT (Gupta et al. 2024, "InterpBench"; IIT: Geiger et al. 2022) trains a network so that a
high-level causal model is its mechanism: patching the components aligned with a variable from a
*source* run into a *base* run must give the high-level output with that variable from the source,
and patching any other component must change nothing. This module holds the machinery, on
``transformers``' ``GPT2LMHeadModel`` (before TransformerLens wraps it): a component is a head's
output before ``attn.c_proj`` (``z``: [batch, pos, n_head, d_head]) or an MLP's output
([batch, pos, d_model]); ``record`` keeps every component's activation, and ``patched`` runs the
model with a per-example, per-position ``PatchMask`` of components taken from a recorded source,
so one forward pass carries examples with different intervened nodes (tests/test_planted.py
tests their exactness).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GPT2LMHeadModel


@dataclass(frozen=True, order=True)
class Component:
    """One head (``head`` >= 0) or MLP (``head`` = -1) of layer ``layer``."""

    layer: int
    kind: str  # "head" | "mlp"
    head: int = -1

    @property
    def label(self) -> str:
        return f"a{self.layer}.h{self.head}" if self.kind == "head" else f"mlp{self.layer}"


def all_components(n_layers: int, n_heads: int) -> list[Component]:
    """Every head and every MLP, in residual write order."""
    out: list[Component] = []
    for layer in range(n_layers):
        out.extend(Component(layer, "head", h) for h in range(n_heads))
        out.append(Component(layer, "mlp"))
    return out


Activations = dict[tuple[str, int], torch.Tensor]  # ("z"|"mlp", layer) -> activation


class PatchMask:
    """Which (example, position, component) activations come from the source run.

    ``heads[layer]``: bool [batch, pos, n_head]; ``mlps[layer]``: bool [batch, pos].
    """

    def __init__(self, batch: int, pos: int, n_layers: int, n_heads: int) -> None:
        self.heads = torch.zeros(n_layers, batch, pos, n_heads, dtype=torch.bool)
        self.mlps = torch.zeros(n_layers, batch, pos, dtype=torch.bool)

    def set(self, example: int | slice, comp: Component, positions: list[int] | slice) -> None:
        """Patch ``comp`` at ``positions`` of ``example`` (indices or slices)."""
        if comp.kind == "head":
            self.heads[comp.layer, example, positions, comp.head] = True
        else:
            self.mlps[comp.layer, example, positions] = True


@contextmanager
def _hooks(
    model: GPT2LMHeadModel,
    store: Activations | None = None,
    source: Activations | None = None,
    mask: PatchMask | None = None,
) -> Iterator[None]:
    """Record into ``store`` and/or patch from ``source`` where ``mask`` says, then remove hooks."""
    handles = []
    n_head = model.config.n_head
    for layer, block in enumerate(model.transformer.h):

        def z_hook(module, args, layer=layer):  # noqa: ANN001 - torch hook signature
            (z,) = args  # [batch, pos, d_model] = heads' outputs, concatenated
            b, p, d = z.shape
            zh = z.view(b, p, n_head, d // n_head)  # [batch, pos, head, d_head]
            if source is not None and mask is not None and mask.heads[layer].any():
                m = mask.heads[layer].to(z.device)[..., None]  # [batch, pos, head, 1]
                zh = torch.where(m, source[("z", layer)], zh)
            if store is not None:
                store[("z", layer)] = zh
            return (zh.reshape(b, p, d),)

        def mlp_hook(module, args, out, layer=layer):  # noqa: ANN001 - torch hook signature
            if source is not None and mask is not None and mask.mlps[layer].any():
                m = mask.mlps[layer].to(out.device)[..., None]  # [batch, pos, 1]
                out = torch.where(m, source[("mlp", layer)], out)
            if store is not None:
                store[("mlp", layer)] = out
            return out

        handles.append(block.attn.c_proj.register_forward_pre_hook(z_hook))
        handles.append(block.mlp.register_forward_hook(mlp_hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def record(model: GPT2LMHeadModel, tokens: torch.Tensor) -> tuple[torch.Tensor, Activations]:
    """Run ``tokens`` [batch, pos]; returns (final hidden [batch, pos, d_model], activations)."""
    store: Activations = {}
    with _hooks(model, store=store):
        hidden = model.transformer(input_ids=tokens).last_hidden_state
    return hidden, store


def patched(
    model: GPT2LMHeadModel,
    tokens: torch.Tensor,
    source: Activations,
    mask: PatchMask,
    store: Activations | None = None,
) -> torch.Tensor:
    """Run ``tokens`` with the masked components taken from ``source``; final hidden states.

    ``source`` activations must come from prompts of the same shape ([batch, pos]); ``store``
    (optional) receives this run's activations, patched ones included.
    """
    with _hooks(model, store=store, source=source, mask=mask):
        return model.transformer(input_ids=tokens).last_hidden_state
