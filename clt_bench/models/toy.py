"""The embedded toy model: a small GPT-2-architecture model with the real GPT-2 tokenizer.

Trained by ``clt-bench toy-model train`` (``clt_bench.model_training.toy_train``) on the synthetic
corpus of ``clt_bench.model_training.synthetic_corpus``; the weights ship as
``clt_bench/data/toy/toy.safetensors`` (fp16).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from clt_bench.errors import UserError
from clt_bench.io import load_tensors
from clt_bench.paths import package_data

# CLT_BENCH_TOY_DIR points at another toy folder (toy.safetensors + config.json), e.g. a retrain
TOY_DIR = Path(os.environ.get("CLT_BENCH_TOY_DIR") or package_data("toy"))
TOY_WEIGHTS = TOY_DIR / "toy.safetensors"
TOY_CONFIG = TOY_DIR / "config.json"

# Architecture of the toy (a Hugging Face GPT2Config). Changing it requires retraining.
DEFAULT_TOY_ARCH = dict(
    n_layer=4,
    n_head=4,
    n_embd=128,
    n_inner=512,
    n_positions=64,
    vocab_size=50257,
    tie_word_embeddings=True,
)


def build_toy_module(arch: dict | None = None, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**(arch or DEFAULT_TOY_ARCH)))


def load_toy_module(
    weights: Path = TOY_WEIGHTS, dtype: torch.dtype = torch.float32, arch: dict | None = None
) -> GPT2LMHeadModel:
    """The toy module from ``weights``; ``arch`` defaults to the config.json beside them."""
    if not weights.is_file():
        raise UserError(
            f"the toy model's weights are missing ({weights}); run `clt-bench toy-model train`."
        )
    config = Path(weights).parent / "config.json"
    if arch is None and config.is_file():
        arch = json.loads(config.read_text())["arch"]
    model = build_toy_module(arch)
    state = {k: v.to(torch.float32) for k, v in load_tensors(weights).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [
        m for m in missing if not m.endswith((".attn.bias", ".attn.masked_bias", "lm_head.weight"))
    ]
    if missing or unexpected:
        raise UserError(f"toy weights {weights} do not match the toy architecture.")
    model.tie_weights()
    return model.to(dtype).eval()


def weights_fingerprint(weights: Path = TOY_WEIGHTS) -> str:
    """Short sha256 of a weights file (default: the toy's), so a retrained toy or planted model
    invalidates cached pipeline stages."""
    import hashlib

    if not weights.is_file():
        return "missing"
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
