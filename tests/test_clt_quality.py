"""The replacement model's agreement metrics (clt_bench.clt.replacement_hooks, used by
clt_bench.clt.quality) against their definitions, computed the plain way."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_bridge

from clt_bench.activations.tokens import TokenRows
from clt_bench.clt.model import CLTSpec, CrossLayerTranscoder
from clt_bench.clt.replacement_hooks import agreement_metrics, replacement_hooks, zero_mlp_hooks


def _random_clt(n_layers: int, d: int, seed: int) -> CrossLayerTranscoder:
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(CLTSpec(n_layers, d, 24, "jumprelu"))
    with torch.no_grad():
        for p in clt.parameters():
            p.normal_(0.0, 0.3)
        clt.log_threshold.fill_(-2.0)  # thresholds ~0.14: some features fire, some do not
    return clt.eval().requires_grad_(False)


@pytest.mark.parametrize("keep_first", [False, True])
@torch.no_grad()
def test_agreement_metrics_follow_their_definitions(keep_first):
    bridge = tiny_bridge(n_layer=3, n_embd=32, seed=5)
    clt = _random_clt(3, 32, seed=6)
    torch.manual_seed(7)
    tokens = torch.randint(0, 50257, (5, 9))
    mask = torch.ones(5, 9, dtype=torch.bool)
    mask[1, 6:] = False  # a short row
    mask[3, 4:] = False
    got = agreement_metrics(bridge, clt, TokenRows(tokens, mask), 2, keep_first)

    lo = bridge(tokens).log_softmax(-1)
    lr = bridge.run_with_hooks(tokens, fwd_hooks=replacement_hooks(clt, keep_first))
    lz = bridge.run_with_hooks(tokens, fwd_hooks=zero_mlp_hooks(3, keep_first))
    lr, lz = lr.log_softmax(-1), lz.log_softmax(-1)
    scored = mask.clone()
    if keep_first:
        scored[:, 0] = False
    nxt = scored[:, 1:] & scored[:, :-1]
    target = tokens[:, 1:, None]

    def ce(lp: torch.Tensor) -> float:
        return float(-(lp[:, :-1].gather(-1, target)[..., 0] * nxt).sum() / nxt.sum())

    kl = (lo.exp() * (lo - lr)).sum(-1)
    want = {
        "replacement_top1_agreement": float(
            (lo.argmax(-1) == lr.argmax(-1))[scored].double().mean()
        ),
        "kl": float(kl[scored].mean()),
        "ce_loss_original": ce(lo),
        "ce_loss_replacement": ce(lr),
        "ce_loss_zero_ablation": ce(lz),
    }
    assert want["kl"] > 0 and want["ce_loss_zero_ablation"] != want["ce_loss_original"]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert got["eval_tokens_replacement"] == int(scored.sum())
