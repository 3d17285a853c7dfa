"""Ablation effects of single CLT features on the probability difference (PD).

- **constrained** (``constrained_delta_pd_frozen``, used by the stage): constrained patching as
  ``clt_bench.graphs.constrained_patch`` does by default -- in the local replacement model with
  attention patterns, LayerNorm denominators, error nodes AND every other feature frozen at their
  clean values, the feature is set to ``scale`` x its activation (0 = zeroed) at every position.
  That model is affine in the feature, so the END residual moves by exactly (scale - 1) x the
  feature's direct effect on it (``TaskAttributions.direct_x``); the full-vocabulary softmax is then
  recomputed.
- **free** (``free_delta_pd``): the real model runs unfrozen; the feature's decoder writes
  (clean activation x W_dec to every layer it writes) are removed from ``hook_mlp_out`` at every
  position, and everything downstream (attention, real MLPs) responds.

Each reports, per feature, the mean over ALL prompts of PD(ablated) - PD(clean), prompts where the
feature is inactive counting 0. ``free_delta_pd`` may evaluate only ``max_prompts`` of a feature's
active prompts (evenly spaced) and scale their sum by (active prompts / evaluated prompts).

Many (feature, prompt) pairs share one forward pass (rows of a
replicated batch); only the END position is unembedded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.task.dataset import Rows, TaskBatch
from clt_bench.task.metrics import answer_probs


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


def decoder_rows(
    clt: CrossLayerTranscoder,
    features: Sequence[tuple[int, int]],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[K, L, d] each (layer, id) feature's decoder row into every layer (0 where it does not
    write), read once per feature instead of once per (feature, prompt) row."""
    out = torch.zeros(len(features), clt.n_layers, clt.spec.d_model, dtype=dtype, device=device)
    for u, (layer, fid) in enumerate(features):
        for tgt in clt.target_layers(layer):
            out[u, tgt] = clt.layer_decoder(layer, tgt)[fid].detach().to(dtype)
    return out


def clean_writes(
    acts: torch.Tensor, dec: torch.Tensor, prompt: torch.Tensor, *features: torch.Tensor
) -> torch.Tensor:
    """[L, R, pos, d] the summed clean decoder writes of ``features`` (each [R] indices into
    ``acts`` [K, n, pos] and ``dec`` [K, L, d]; -1 = none) in rows with prompts ``prompt`` [R].

    Row r: sum over the features f of acts[f, prompt, :, None] x dec[f] (elementwise products
    summed in the order given, as a per-row loop would add them).
    """
    out = None
    for f in features:
        ok = f >= 0
        fi = f.clamp_min(0)
        w = acts[fi, prompt][:, :, None, None] * dec[fi][:, None]  # [R, pos, L, d]
        if out is None:
            out = torch.where(ok[:, None, None, None], w, torch.zeros_like(w))
        else:
            out = torch.where(ok[:, None, None, None], out + w, out)
    assert out is not None
    return out.permute(2, 0, 1, 3)


def pd_of(logits: torch.Tensor, batch: TaskBatch, idx: Rows = None) -> torch.Tensor:
    """[n] probability difference of END logits [n, V] of ``batch``'s prompts ``idx`` (all when
    None; repeats allowed): the task's relation, answer count and (``exact``) answers."""
    return batch.prob_diff(answer_probs(logits, batch.answer_ids), idx)


def delta_pd_without(
    bridge, batch: TaskBatch, idx: torch.Tensor, sub: torch.Tensor, clean_pd: torch.Tensor
) -> np.ndarray:
    """[R] dPD of prompt rows ``idx`` when ``sub`` [L, R, pos, d] (clean decoder writes) is
    subtracted from every layer's ``hook_mlp_out``."""
    dev = next(bridge.parameters()).device
    hooks = [
        (f"blocks.{t}.hook_mlp_out", lambda y, hook, t=t: y - sub[t].to(y.dtype))
        for t in range(sub.shape[0])
        if bool(sub[t].any())
    ]
    tokens = batch.clean[idx].to(dev)
    logits = end_logits_via(bridge, lambda: bridge.run_with_hooks(tokens, fwd_hooks=hooks))
    return (pd_of(logits, batch, idx) - clean_pd[idx]).cpu().numpy()


@torch.no_grad()
def removal_deltas(
    bridge,
    clt: CrossLayerTranscoder,
    batch: TaskBatch,
    features: Sequence[tuple[int, int]],
    acts: Sequence[np.ndarray],
    removals: Sequence[tuple[int, Sequence[int]]],
    rows_per_pass: int,
    progress: bool = False,
) -> np.ndarray:
    """[R] dPD of each removal (prompt, the indices into ``features`` removed together) when their
    clean decoder writes (``acts[u]`` [n, pos]: feature u's clean activations) are subtracted from
    every layer's ``hook_mlp_out``; ``rows_per_pass`` removals per forward pass."""
    dev = next(bridge.parameters()).device
    clean_pd = pd_of(end_logits_via(bridge, lambda: bridge(batch.clean.to(dev))), batch)
    dec = decoder_rows(clt, features, torch.float32, dev)  # [K, L, d]
    a_all = torch.stack([torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in acts]).to(dev)
    width = max((len(m) for _, m in removals), default=0)
    groups = [removals[i : i + rows_per_pass] for i in range(0, len(removals), rows_per_pass)]
    deltas = []
    for group in tqdm(groups, desc="free ablations", disable=not progress):
        idx = torch.tensor([p for p, _ in group])  # prompt rows: the batch stays on the CPU
        members = torch.tensor([[*m, *[-1] * (width - len(m))] for _, m in group], device=dev)
        sub = clean_writes(a_all, dec, idx.to(dev), *members.T)  # [L, R, pos, d]
        deltas.append(delta_pd_without(bridge, batch, idx, sub, clean_pd))
    return np.concatenate(deltas) if deltas else np.zeros(0)


@torch.no_grad()
def constrained_delta_pd_frozen(
    att,
    keys: Sequence[int],
    W_U: torch.Tensor,
    b_U: torch.Tensor | None,
    batch: TaskBatch,
    scale: float = 0.0,
    rows_per_pass: int = 512,
) -> np.ndarray:
    """[K] mean Delta PD of setting each feature ``keys`` to ``scale`` x its activation in the
    fully frozen local replacement model (see module docstring). ``att``: ``TaskAttributions``
    of ``batch`` (its ``direct_x`` and ``x_end``); W_U [d, V], b_U [V]."""
    dev = W_U.device
    x_end = torch.as_tensor(att.x_end, dtype=W_U.dtype, device=dev)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        out = x @ W_U
        return out if b_U is None else out + b_U

    clean_pd = pd_of(logits_of(x_end), batch)
    index = {int(k): i for i, k in enumerate(keys)}
    rows = np.nonzero(np.isin(att.pair_key, np.asarray(keys)))[0]
    total = np.zeros(len(keys))
    for start in range(0, len(rows), rows_per_pass):
        r = rows[start : start + rows_per_pass]
        prompt = torch.as_tensor(att.pair_prompt[r], device=dev)
        dx = torch.as_tensor(att.direct_x[r], dtype=W_U.dtype, device=dev)
        pd = pd_of(logits_of(x_end[prompt] + (scale - 1.0) * dx), batch, prompt)
        delta = (pd - clean_pd[prompt]).cpu().numpy()
        np.add.at(total, [index[int(k)] for k in att.pair_key[r]], delta)
    return total / max(att.n_prompts, 1)


def sample_prompts(active: np.ndarray, max_prompts: int) -> np.ndarray:
    """At most ``max_prompts`` of ``active`` (evenly spaced); all when max_prompts <= 0."""
    if max_prompts <= 0 or len(active) <= max_prompts:
        return active
    return active[np.linspace(0, len(active) - 1, max_prompts).round().astype(int)]


@torch.no_grad()
def free_delta_pd(
    bridge,
    clt: CrossLayerTranscoder,
    batch: TaskBatch,
    features: Sequence[tuple[int, int]],
    acts: Sequence[np.ndarray],
    active: Sequence[np.ndarray],
    rows_per_pass: int = 256,
    max_prompts: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """[K] mean Delta PD of removing each feature's decoder writes from the real model.

    ``acts[u]`` [n, pos]: feature u's clean activations; ``active[u]``: its prompts, of which
    at most ``max_prompts`` are evaluated (0 = all; see the module docstring).
    """
    n = len(batch)
    weight = np.array([len(a) / max(len(sample_prompts(a, max_prompts)), 1) for a in active])
    active = [sample_prompts(a, max_prompts) for a in active]
    rows = [(int(p), (u,)) for u, ps in enumerate(active) for p in ps if 0 <= p < n]
    deltas = removal_deltas(bridge, clt, batch, features, acts, rows, rows_per_pass, progress)
    total = np.zeros(len(features))
    for (_, (u,)), d in zip(rows, deltas, strict=True):
        total[u] += float(d)
    return total * weight / max(n, 1)
