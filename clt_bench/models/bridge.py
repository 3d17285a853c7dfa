"""A locally built Hugging Face GPT-2 in a TransformerLens bridge (the toy and planted models,
GPT-2's random-weights variant)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import build_bridge_from_module
from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase

HookFn = Callable[..., Any]  # (activation, hook) -> the activation to use
FwdHook = tuple[str | HookFn, HookFn]  # (hook name, fn), as ``run_with_hooks`` types it
FwdHooks = list[FwdHook]


def wrap_hf_gpt2(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, name: str
) -> TransformerBridge:
    """Wrap a locally built Hugging Face GPT-2 module in a TransformerLens bridge."""
    model.eval()
    return build_bridge_from_module(
        model, "GPT2LMHeadModel", hf_config=model.config, tokenizer=tokenizer, model_name=name
    )
