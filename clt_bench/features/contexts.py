"""Top activating contexts of chosen CLT features in corpus token rows (short snippets).

The rows are the activations stage's held-out rows of the CLT-training corpus (``load_heldout``),
or any ``TokenRows``. One forward pass per row batch reads ``hook_resid_mid`` of the layers
needed; each feature's activation is the CLT's (its layer's activation function on all of that
layer's features, so TopK variants are right).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from clt_bench.activations.extract import capture
from clt_bench.activations.tokens import TokenRows
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.graphs.local_replacement import layer_activate


def snippet(
    tokenizer: PreTrainedTokenizerBase, row: torch.Tensor, pos: int, left: int = 8, right: int = 2
) -> str:
    """Tokens ``pos - left .. pos + right`` of ``row`` with the token at ``pos`` in [[ ]]."""
    lo, hi = max(0, pos - left), min(len(row), pos + right + 1)
    before = tokenizer.decode(row[lo:pos].tolist())
    at = tokenizer.decode(row[pos : pos + 1].tolist())
    after = tokenizer.decode(row[pos + 1 : hi].tolist())
    text = f"{before}[[{at}]]{after}"
    return " ".join(text.replace("|", "/").split())


@torch.no_grad()
def top_contexts(
    bridge: TransformerBridge,
    clt: CrossLayerTranscoder,
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterable[TokenRows],
    features: Sequence[tuple[int, int]],
    n: int = 5,
) -> list[list[tuple[float, str]]]:
    """For each (layer, feature): its ``n`` largest activations over the rows' real tokens, as
    (activation, snippet), largest first (fewer when it fires less often)."""
    layers = sorted({layer for layer, _ in features})
    by_layer = {
        layer: [i for i, (lay, _) in enumerate(features) if lay == layer] for layer in layers
    }
    fids = {layer: torch.tensor([features[i][1] for i in idx]) for layer, idx in by_layer.items()}
    best_v = torch.full((len(features), n), -1.0, dtype=torch.float64)
    best_loc = torch.full((len(features), n, 2), -1, dtype=torch.long)  # (row id, pos)
    kept: list[torch.Tensor] = []
    dev = next(bridge.parameters()).device
    row0 = 0
    names = [f"blocks.{layer}.hook_resid_mid" for layer in layers]
    for batch in rows:
        cap = capture(bridge, batch.tokens.to(dev), names)  # up to the last layer read
        mask = batch.mask.to(dev)
        for layer, name in zip(layers, names, strict=True):
            x = cap[name].to(clt.W_enc.dtype) * clt.input_scale[layer]
            h = x @ clt.W_enc[layer].T + clt.b_enc[layer]  # [rows, pos, F]
            a = layer_activate(clt, layer, h)[..., fids[layer]]  # [rows, pos, k]
            a = torch.where(mask[..., None], a, torch.zeros_like(a)).double().cpu()
            R, P, k = a.shape
            flat = a.reshape(R * P, k)
            top_n = min(n, R * P)
            v, i = flat.topk(top_n, dim=0)  # [top_n, k]
            for j, fi in enumerate(by_layer[layer]):
                cand_v = torch.cat([best_v[fi], v[:, j]])
                cand_loc = torch.cat(
                    [best_loc[fi], torch.stack([i[:, j] // P + row0, i[:, j] % P], 1)]
                )
                order = cand_v.argsort(descending=True)[:n]
                best_v[fi], best_loc[fi] = cand_v[order], cand_loc[order]
        kept.append(batch.tokens.cpu())
        row0 += batch.tokens.shape[0]
    width = max((t.shape[1] for t in kept), default=0)
    all_rows = (
        torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in kept])
        if kept
        else torch.zeros(0, 0, dtype=torch.long)
    )
    out: list[list[tuple[float, str]]] = []
    for fi in range(len(features)):
        items = []
        for v, (r, p) in zip(best_v[fi].tolist(), best_loc[fi].tolist(), strict=True):
            if v > 0 and r >= 0:
                items.append((float(v), snippet(tokenizer, all_rows[r], int(p))))
        out.append(items)
    return out
