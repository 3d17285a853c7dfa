"""One forward pass -> hook_resid_mid and hook_mlp_out of every layer (stops after the last)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.activations.tokens import TokenRows
from clt_bench.models.bridge import HookFn


class _StopForward(Exception):
    """Raised by the last capture hook: nothing after the last MLP is needed."""


def hook_names(n_layers: int) -> tuple[list[str], list[str]]:
    """(resid_mid names, mlp_out names) for layers 0..n_layers-1."""
    return (
        [f"blocks.{layer}.hook_resid_mid" for layer in range(n_layers)],
        [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)],
    )


def capture(
    bridge: TransformerBridge, tokens: torch.Tensor, names: list[str]
) -> dict[str, torch.Tensor]:
    """The activations (detached) at the hook points ``names`` of one forward pass of ``tokens``,
    which stops at the last of them: nothing after it is computed."""
    store: dict[str, torch.Tensor] = {}

    def saver(name: str) -> HookFn:
        def hook(t: torch.Tensor, hook: Any = None) -> torch.Tensor:
            store[name] = t.detach()
            if name == names[-1]:
                raise _StopForward
            return t

        return hook

    with contextlib.suppress(_StopForward):
        bridge.run_with_hooks(tokens, fwd_hooks=[(n, saver(n)) for n in names])
    return store


@torch.no_grad()
def extract_activations(
    bridge: TransformerBridge,
    rows: TokenRows,
    dtype: torch.dtype = torch.float32,
    exclude_bos: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> (resid_mid [n, L, d], mlp_out [n, L, d]) at the n real (unmasked) tokens.

    ``exclude_bos`` leaves out position 0 of every row (``activations.exclude_bos``).
    """
    ins, outs = hook_names(int(bridge.cfg.n_layers))
    device = next(bridge.parameters()).device
    store = capture(bridge, rows.tokens.to(device), ins + outs)
    mask = rows.mask.to(device)
    if exclude_bos:
        mask = mask.clone()
        mask[:, 0] = False
    x = torch.stack([store[n][mask] for n in ins], dim=1).to(dtype)
    y = torch.stack([store[n][mask] for n in outs], dim=1).to(dtype)
    return x, y
