"""Ablation effects of single CLT features on the probability difference (PD).

- **constrained** (``constrained_delta_pd``): in ``clt_bench.graphs``' local replacement model
  (attention patterns, LayerNorm denominators and error nodes frozen at their clean values) the
  feature is clamped to ``scale`` x its activation (0 = zeroed) at every position, and the features
  of its own and later layers are recomputed by the CLT (``run_frozen`` ``live`` mode); earlier
  layers are unaffected and stay frozen.
- **free** (``free_delta_pd``): the real model runs unfrozen; the feature's decoder writes
  (clean activation x W_dec to every layer it writes) are removed from ``hook_mlp_out`` at every
  position, and everything downstream (attention, real MLPs) responds.

Both report, per feature, the mean over ALL prompts of PD(ablated) - PD(clean), prompts where the
feature is inactive counting 0. Many (feature, prompt) pairs share one forward pass (rows of a
replicated batch); only the END position is unembedded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.graphs.replacement import ReplacementModel, build_replacement, run_frozen
from clt_bench.task.dataset import TaskBatch
from clt_bench.task.metrics import answer_probs, prob_diff_per_example


class _Stop(Exception):
    """Raised at the unembedding: only the residual at END is needed."""


def end_logits_via(bridge, fn: Callable[[], object]) -> torch.Tensor:
    """Run ``fn`` (a forward of ``bridge``) up to the unembedding; [n, V] logits at END.

    The unembedding input at the last position is captured and unembedded alone, which skips
    the [n, pos, V] logits of the full forward.
    """
    cap: dict[str, torch.Tensor] = {}

    def grab(mod, inp, out):
        cap["x"] = out[:, -1].detach()
        raise _Stop

    handle = bridge.hook_dict["unembed.hook_in"].register_forward_hook(grab)
    try:
        fn()
    except _Stop:
        pass
    finally:
        handle.remove()
    W_U = bridge.W_U.detach()
    b_U = getattr(bridge, "b_U", None)
    out = cap["x"].to(W_U.dtype) @ W_U
    return out if b_U is None else out + b_U.detach()


def pd_of(logits: torch.Tensor, yy: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """[n] probability difference of END logits [n, V] for start years ``yy`` [n]."""
    p = answer_probs(logits, batch.answer_ids)
    return prob_diff_per_example(p, yy.to(p.device), batch.relation)


def replicate(rm: ReplacementModel, idx: torch.Tensor) -> ReplacementModel:
    """A replacement model whose prompts are ``rm``'s prompts ``idx`` [R] (repeats allowed)."""
    out = ReplacementModel(
        bridge=rm.bridge, clt=rm.clt, tokens=rm.tokens[idx],
        frozen={k: v[idx] for k, v in rm.frozen.items()}, embed=rm.embed[idx],
        pos_embed=rm.pos_embed[idx], resid_mid=rm.resid_mid[idx], mlp_out=rm.mlp_out[idx],
        pre_acts=rm.pre_acts[idx], acts=rm.acts[idx], errors=rm.errors[idx],
        logits=rm.logits[idx],
    )
    out.active_idx = [out.acts[:, :, layer].nonzero() for layer in range(out.n_layers)]
    return out


def _pairs(active: Sequence[np.ndarray], lo: int, hi: int) -> list[tuple[int, int]]:
    """(feature index, prompt) pairs with the prompt in [lo, hi) among each feature's prompts."""
    return [(u, int(p)) for u, ps in enumerate(active) for p in ps if lo <= p < hi]


def _groups(pairs: list[tuple[int, int]], size: int) -> list[list[tuple[int, int]]]:
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


@torch.no_grad()
def constrained_delta_pd(bridge, clt: CrossLayerTranscoder, batch: TaskBatch,
                         features: Sequence[tuple[int, int]], active: Sequence[np.ndarray],
                         scale: float = 0.0, prompts_per_pass: int = 16, rows_per_pass: int = 128,
                         progress: bool = True) -> np.ndarray:
    """[K] mean Delta PD of clamping each feature (layer, id) to ``scale`` x its activation.

    ``active[u]``: the prompts (indices into ``batch``) where feature u is active.
    """
    n = len(batch)
    total = np.zeros(len(features))
    for start in tqdm(range(0, n, prompts_per_pass), desc="constrained ablations",
                      disable=not progress):
        stop = min(start + prompts_per_pass, n)
        pairs = _pairs(active, start, stop)
        if not pairs:
            continue
        rm = build_replacement(bridge, clt, batch.clean[start:stop])
        yy = batch.yy[start:stop]
        clean_pd = pd_of(rm.logits, yy, batch)
        for group in _groups(pairs, rows_per_pass):
            idx = torch.tensor([p - start for _, p in group])
            rep = replicate(rm, idx)
            acts, clamp = rep.acts.clone(), torch.zeros_like(rep.acts, dtype=torch.bool)
            rows = torch.arange(len(group))
            lay = torch.tensor([features[u][0] for u, _ in group])
            fid = torch.tensor([features[u][1] for u, _ in group])
            acts[rows, :, lay, fid] = acts[rows, :, lay, fid] * scale
            clamp[rows, :, lay, fid] = True
            first = int(lay.min())
            modes = ["frozen" if layer < first else "live" for layer in range(rep.n_layers)]
            logits = end_logits_via(bridge, lambda rep=rep, acts=acts, clamp=clamp, modes=modes:
                                    run_frozen(rep, modes=modes, acts=acts, clamp=clamp))
            delta = pd_of(logits, yy[idx], batch) - clean_pd[idx]
            for r, (u, _) in enumerate(group):
                total[u] += float(delta[r])
    return total / max(n, 1)


@torch.no_grad()
def free_delta_pd(bridge, clt: CrossLayerTranscoder, batch: TaskBatch,
                  features: Sequence[tuple[int, int]], acts: Sequence[np.ndarray],
                  active: Sequence[np.ndarray], rows_per_pass: int = 256,
                  progress: bool = True) -> np.ndarray:
    """[K] mean Delta PD of removing each feature's decoder writes from the real model.

    ``acts[u]`` [n, pos]: feature u's clean activations; ``active[u]``: its prompts.
    """
    n = len(batch)
    dev = next(bridge.parameters()).device
    clean_pd = pd_of(end_logits_via(bridge, lambda: bridge(batch.clean.to(dev))), batch.yy, batch)
    total = np.zeros(len(features))
    pairs = _pairs(active, 0, n)
    for group in tqdm(_groups(pairs, rows_per_pass), desc="free ablations", disable=not progress):
        idx = torch.tensor([p for _, p in group])
        tokens = batch.clean[idx].to(dev)
        L = clt.n_layers
        sub = torch.zeros(L, len(group), tokens.shape[1], clt.spec.d_model, device=dev)
        for r, (u, p) in enumerate(group):
            layer, fid = features[u]
            a = torch.as_tensor(acts[u][p], dtype=sub.dtype, device=dev)  # [pos]
            for tgt in clt.target_layers(layer):
                dec = clt.layer_decoder(layer, tgt)[fid].detach().to(sub.dtype)
                sub[tgt, r] += a[:, None] * dec
        used = [t for t in range(L) if bool(sub[t].any())]

        def hook(t: int, sub: torch.Tensor = sub):
            return lambda y, hook: y - sub[t].to(y.dtype)

        hooks = [(f"blocks.{t}.hook_mlp_out", hook(t)) for t in used]
        logits = end_logits_via(bridge, lambda tokens=tokens, hooks=hooks:
                                bridge.run_with_hooks(tokens, fwd_hooks=hooks))
        delta = pd_of(logits, batch.yy[idx], batch) - clean_pd[idx]
        for r, (u, _) in enumerate(group):
            total[u] += float(delta[r])
    return total / max(n, 1)
