"""Shared fixtures: the real GPT-2 tokenizer, the task spec and tiny random GPT-2 bridges."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tokenizer():
    from clt_bench.models.tokenizer import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def task_spec():
    from clt_bench.task.spec import load_task

    return load_task("greater_than")


def tiny_bridge(
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A tiny random GPT-2-shaped TransformerBridge with the real tokenizer (full vocab)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from clt_bench.models.sources import wrap_hf_gpt2
    from clt_bench.models.tokenizer import gpt2_tokenizer

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=64, vocab_size=50257
    )
    model = GPT2LMHeadModel(cfg).to(dtype)
    return wrap_hf_gpt2(model, gpt2_tokenizer(), "tiny")
