"""Helpers for the graph property tests: tiny random bridges, random and exact CLTs."""

from __future__ import annotations

import functools

import torch

from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder
from clt_bench.graphs.local_replacement import ReplacementModel
from clt_bench.graphs.random_clt import random_clt
from clt_bench.models.sources import LoadedModel

KINDS = ("jumprelu", "topk", "batchtopk", "relu")


@functools.lru_cache(maxsize=8)
def tiny_loaded(
    n_layer: int = 2, n_embd: int = 16, seed: int = 0, dtype: torch.dtype = torch.float64
) -> LoadedModel:
    """A tiny random GPT-2-shaped bridge (full GPT-2 vocabulary) with the real tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from clt_bench.models.sources import wrap_hf_gpt2
    from clt_bench.models.tokenizer import gpt2_tokenizer

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=2, n_embd=n_embd, n_positions=32, vocab_size=50257)
    model = GPT2LMHeadModel(cfg).to(dtype)
    bridge = wrap_hf_gpt2(model, gpt2_tokenizer(), "tiny")
    for p in bridge.parameters():
        p.requires_grad_(False)
    return LoadedModel(name="tiny", bridge=bridge, tokenizer=gpt2_tokenizer())


def resid_mid(loaded: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """[pos, L, d] clean resid_mid of one prompt."""
    names = [f"blocks.{i}.hook_resid_mid" for i in range(loaded.n_layers)]
    _, cache = loaded.bridge.run_with_cache(tokens[None], names_filter=names)
    return torch.stack([cache[n][0] for n in names], 1)


def make_clt(
    loaded: LoadedModel,
    tokens: torch.Tensor,
    kind: str,
    cross_layer: bool = True,
    skip: bool = False,
    n_features: int = 24,
    seed: int = 0,
) -> CrossLayerTranscoder:
    x = resid_mid(loaded, tokens)
    dtype = next(loaded.bridge.parameters()).dtype
    return random_clt(
        loaded.n_layers,
        loaded.d_model,
        n_features,
        kind,
        cross_layer=cross_layer,
        skip=skip,
        k=3,
        seed=seed,
        dtype=dtype,
        calibrate_on=x,
        rate=0.3,
        decoder_scale=1.0,
    )


@torch.no_grad()
def exact_clt(loaded: LoadedModel, tokens: torch.Tensor) -> CrossLayerTranscoder:
    """A CLT that reconstructs every MLP output of ``tokens`` exactly (error nodes ~ 0).

    One JumpReLU feature per (layer, position): its encoder solves x_q . w_p = 1[p == q] over
    the prompt's positions (least squares; pos <= d_model), threshold 0.5, and its decoder to its
    own layer is that position's MLP output minus b_dec (zero). Every other decoder is zero, but
    the features are real nodes with real edges between layers.
    """
    names = [
        f"blocks.{i}.hook_{h}" for i in range(loaded.n_layers) for h in ("resid_mid", "mlp_out")
    ]
    _, cache = loaded.bridge.run_with_cache(tokens[None], names_filter=names)
    L, d, P = loaded.n_layers, loaded.d_model, tokens.shape[0]
    dtype = next(loaded.bridge.parameters()).dtype
    clt = CrossLayerTranscoder(CLTSpec(L, d, P, "jumprelu"), dtype=dtype)
    clt.log_threshold.fill_(torch.log(torch.tensor(0.5)).item())
    for layer in range(L):
        X = cache[f"blocks.{layer}.hook_resid_mid"][0]  # [P, d]
        Y = cache[f"blocks.{layer}.hook_mlp_out"][0]
        clt.W_enc[layer] = torch.linalg.pinv(X.double()).T.to(dtype)  # rows w_p: X w_p = e_p
        clt.W_dec[layer][:, 0] = Y
    return clt


def perturbed(rm: ReplacementModel, **changes) -> dict:
    """Copies of rm's source tensors with ``changes`` applied (acts / embed / errors)."""
    out = {"acts": rm.acts.clone(), "embed": rm.embed.clone(), "errors": rm.errors.clone()}
    out.update(changes)
    return out
