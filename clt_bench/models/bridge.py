"""A locally built Hugging Face GPT-2 in a TransformerLens bridge (the toy and planted models,
GPT-2's random-weights variant)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import build_bridge_from_module
from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase

HookFn = Callable[..., Any]  # (activation, hook) -> the activation to use
FwdHook = tuple[str | HookFn, HookFn]  # (hook name, fn), as ``run_with_hooks`` types it
FwdHooks = list[FwdHook]


@contextmanager
def mlps_replaced(bridge: TransformerBridge) -> Iterator[None]:
    """For forwards whose hooks replace every layer's ``hook_mlp_out`` (a patched or replacement
    model): inside, each MLP's wrapped module returns zeros instead of computing an output that
    its hook throws away. The results are the same to the bit (a test checks it); the forward
    takes ~40 % less time on the planted model. Hooks inside the MLP (``hook_post``) do not fire.
    Only GPT-2's MLPs (whose output has the input's shape) are skipped; others run as usual.
    """
    modules = [
        m
        for m in (block.mlp.original_component for block in bridge.blocks)
        if type(m).__name__ == "GPT2MLP"
    ]
    for m in modules:
        m.forward = lambda x, *args, **kwargs: torch.zeros_like(x)
    try:
        yield
    finally:
        for m in modules:
            del m.forward  # the class's forward again


def wrap_hf_gpt2(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, name: str
) -> TransformerBridge:
    """Wrap a locally built Hugging Face GPT-2 module in a TransformerLens bridge."""
    model.eval()
    return build_bridge_from_module(
        model, "GPT2LMHeadModel", hf_config=model.config, tokenizer=tokenizer, model_name=name
    )
