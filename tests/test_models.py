"""Model sources: gpt2-random at full size, the offline gpt2 error, unknown names."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.errors import UserError
from clt_bench.models import load_model


def count_parameters(bridge: TransformerBridge) -> int:
    """Parameters of the underlying model, counted once.

    The bridge keeps GPT-2's fused ``c_attn`` and also split q/k/v copies of it; the copies are
    not counted (tied embeddings are shared tensors and count once as well).
    """
    seen: set[int] = set()
    total = 0
    for name, p in bridge.original_model.named_parameters():
        if any(f".attn.{x}._original_component" in name for x in "qkv"):
            continue
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


@pytest.fixture(scope="module")
def gpt2_random():
    return load_model("gpt2-random", seed=0)


def test_gpt2_random_has_gpt2_small_shape(gpt2_random):
    bridge = gpt2_random.bridge
    cfg = bridge.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_vocab) == (12, 12, 768, 50257)
    assert count_parameters(bridge) == 124_439_808  # GPT-2 small with tied embeddings


def test_gpt2_random_forward_with_hooks(gpt2_random):
    toks = gpt2_random.tokenizer(
        "<|endoftext|> The war lasted from the year 1711 to the year 17", return_tensors="pt"
    ).input_ids
    seen = {}

    def grab(name):
        def hook(x, hook):  # hook.name may be the canonical alias, so key by the requested name
            seen[name] = x.shape
            return x

        return hook

    names = [f"blocks.{layer}.{h}" for layer in (0, 11) for h in ("hook_resid_mid", "hook_mlp_out")]
    logits = gpt2_random.bridge.run_with_hooks(toks, fwd_hooks=[(n, grab(n)) for n in names])
    assert logits.shape == (1, 13, 50257)
    assert all(seen[n] == (1, 13, 768) for n in names)
    assert torch.isfinite(logits).all()


def test_gpt2_random_is_seeded(gpt2_random):
    def weights(loaded):
        return torch.cat(
            [p.detach().flatten()[:4096] for p in loaded.bridge.original_model.parameters()]
        )

    same = weights(load_model("gpt2-random", seed=0))
    other = weights(load_model("gpt2-random", seed=1))
    assert torch.equal(weights(gpt2_random), same)  # the same seed gives the same weights
    assert not torch.allclose(same, other)  # another seed gives other weights


def test_gpt2_without_network_is_one_clear_error(isolated_hf_cache):
    with pytest.raises(UserError, match="not reachable.*'toy'"):
        load_model("gpt2")


def test_unknown_model():
    with pytest.raises(UserError, match="unknown model"):
        load_model("gpt5")


def test_mlps_replaced_gives_the_same_bits_and_restores_the_mlps():
    """Skipping the MLPs whose outputs every hook replaces changes nothing downstream (logits,
    gradients with respect to the replaced outputs), and the MLPs compute again afterwards."""
    from helpers import tiny_bridge

    from clt_bench.models.bridge import mlps_replaced

    bridge = tiny_bridge(n_layer=3, n_embd=32, seed=4)
    tokens = torch.randint(0, 200, (5, 7))
    outs = torch.randn(5, 7, 3, 32, requires_grad=True)
    hooks = [(f"blocks.{t}.hook_mlp_out", lambda y, hook, t=t: outs[:, :, t]) for t in range(3)]

    def logits_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        (grad,) = torch.autograd.grad(logits[:, -1].logsumexp(-1).sum(), outs)
        return logits.detach(), grad

    plain = logits_and_grad()
    with mlps_replaced(bridge):
        skipped = logits_and_grad()
        posts: list[torch.Tensor] = []
        post_hook = [("blocks.0.mlp.hook_post", lambda t, hook: posts.append(t))]
        bridge.run_with_hooks(tokens, fwd_hooks=post_hook)
    assert torch.equal(plain[0], skipped[0]) and torch.equal(plain[1], skipped[1])
    assert not posts  # inside, the MLPs do not run
    bridge.run_with_hooks(tokens, fwd_hooks=post_hook)
    assert len(posts) == 1  # restored
