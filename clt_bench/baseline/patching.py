"""Position-specific path patching on a TransformerLens ``TransformerBridge``.

A path runs from a *sender* (a head's ``z @ W_O`` write, an MLP's output, or the token+position
embedding, at one token position) to a *receiver* input at the same position: a head's q, k or v
input (the bridge's per-head pre-LayerNorm fork, ``blocks.L.attn.hook_{q,k,v}_input``, which
TransformerLens's own ``get_act_patch_direct_path`` uses), an MLP's input (``blocks.L.ln2.hook_in``,
which feeds only the MLP), or the logits (``ln_final.hook_in``).

Patching a path means: run the *base* input (clean, as Hanna et al. do) and add to the receiver's
input the sender's (source - base) write, every other reader seeing the base value; everything
downstream of the receivers is recomputed. Receivers' LayerNorms are recomputed (or, for the
logits, optionally frozen at the base scale, which makes the direct effect linear).

Batching: the senders of one call are stacked along the batch axis (``senders x examples`` rows), so
one forward pass serves many senders; a forward starts at the first receiver's layer from the cached
base residual stream and unembeds only END. Receivers that are all logits need no forward at all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.baseline.readout import EndReadout, readout_from_logits, readout_from_resid
from clt_bench.models.bridge import FwdHook, FwdHooks
from clt_bench.task.dataset import TaskBatch
from clt_bench.task.end_logits import end_only_hook


@dataclass(frozen=True)
class Sender:
    """A write into the residual stream at token position ``pos`` (an index)."""

    kind: str  # head | mlp | embed
    layer: int
    pos: int
    head: int = -1

    @property
    def order(self) -> int:
        return -1 if self.kind == "embed" else 2 * self.layer + (self.kind == "mlp")


@dataclass(frozen=True)
class Receiver:
    """A read from the residual stream at ``pos``; ``channel`` q|k|v for heads."""

    kind: str  # head | mlp | logits
    layer: int
    pos: int
    head: int = -1
    channel: str = ""

    @property
    def order(self) -> int:
        return 2 * self.layer + (self.kind == "mlp") + (self.kind == "logits") * 10**6


def upstream(s: Sender, r: Receiver) -> bool:
    """Does ``s`` write into the residual stream that ``r`` reads (same position, earlier)?"""
    return s.pos == r.pos and s.order < r.order


@dataclass
class RunCache:
    """Activations of one run over [n] examples; every tensor is [n, pos, ...]."""

    z: list[torch.Tensor]  # per layer [n, pos, n_heads, d_head]
    mlp_out: list[torch.Tensor]  # per layer [n, pos, d_model]
    resid_pre: list[torch.Tensor]  # per layer [n, pos, d_model]
    final: torch.Tensor  # ln_final input [n, pos, d_model]
    final_scale: torch.Tensor  # [n, pos, 1]
    readout: EndReadout  # [n]


def model_device(bridge: TransformerBridge) -> torch.device:
    """The device the model's weights live on: every tensor a patched forward reads goes there."""
    return next(bridge.parameters()).device


@torch.no_grad()
def run_end(
    bridge: TransformerBridge,
    inp: torch.Tensor,
    end_pos: int,
    answer_ids: torch.Tensor,
    hooks: Sequence[FwdHook] = (),
    start_at_layer: int | None = None,
) -> EndReadout:
    """One forward ([b, pos] tokens, or [b, pos, d_model] residual with ``start_at_layer``)."""
    kw: dict[str, Any] = {}
    if start_at_layer:
        kw["start_at_layer"] = start_at_layer
    inp = inp.to(model_device(bridge))
    logits = bridge.run_with_hooks(inp, fwd_hooks=[*hooks, end_only_hook(end_pos)], **kw)
    return readout_from_logits(logits[:, -1], answer_ids)


@torch.no_grad()
def capture_run(
    bridge: TransformerBridge,
    tokens: torch.Tensor,
    end_pos: int,
    answer_ids: torch.Tensor,
    rows: int = 256,
) -> RunCache:
    """Run [n, pos] tokens (``rows`` at a time) and keep what path patching needs.

    The tokens move to the model's device; the cached activations stay there."""
    n_layers = bridge.cfg.n_layers
    tokens = tokens.to(model_device(bridge))
    per_layer = ("attn.hook_z", "hook_mlp_out", "hook_resid_pre")  # RunCache's first three fields
    names = [f"blocks.{i}.{h}" for h in per_layer for i in range(n_layers)]
    names += ["ln_final.hook_in", "ln_final.hook_scale"]
    store: dict[str, list[torch.Tensor]] = defaultdict(list)
    readouts = []

    def saver(name: str) -> Callable[..., torch.Tensor]:
        def save(t: torch.Tensor, hook: Any) -> torch.Tensor:
            store[name].append(t.detach().clone())
            return t

        return save

    save_hooks = [(n, saver(n)) for n in names]
    for i in range(0, tokens.shape[0], rows):
        readouts.append(run_end(bridge, tokens[i : i + rows], end_pos, answer_ids, save_hooks))
    cat = {k: torch.cat(v) for k, v in store.items()}
    z, mlp_out, resid_pre = ([cat[f"blocks.{i}.{h}"] for i in range(n_layers)] for h in per_layer)
    final, scale = cat["ln_final.hook_in"], cat["ln_final.hook_scale"]
    return RunCache(z, mlp_out, resid_pre, final, scale, EndReadout.cat(readouts))


@contextmanager
def split_qkv(bridge: TransformerBridge, on: bool = True) -> Iterator[None]:
    """Enable the per-head pre-LayerNorm q/k/v forks (``hook_{q,k,v}_input``) temporarily."""
    saved = bool(getattr(bridge.cfg, "use_split_qkv_input", False))
    try:
        if on and not saved:
            bridge.set_use_split_qkv_input(True)
        yield
    finally:
        if on and not saved:
            bridge.set_use_split_qkv_input(False)


@dataclass
class PatchContext:
    """Base and source runs of one dataset, ready for path patching.

    ``base`` is the run every patched forward starts from (clean in Hanna's procedure) and
    ``source`` the run the senders' values come from (the 01-corrupted dataset).
    """

    bridge: TransformerBridge
    batch: TaskBatch
    base_tokens: torch.Tensor  # [n, pos]
    base: RunCache
    source: RunCache
    rows: int = 1024
    base_is_clean: bool = True

    @property
    def n(self) -> int:
        return int(self.base_tokens.shape[0])

    @property
    def end_pos(self) -> int:
        return self.batch.end_pos

    @property
    def yy_pos(self) -> int:
        return self.batch.yy_pos

    @classmethod
    def build(
        cls,
        bridge: TransformerBridge,
        batch: TaskBatch,
        base: str = "clean",
        rows: int = 1024,
    ) -> PatchContext:
        """``base`` = "clean" (senders take corrupted values) or "corrupted" (the reverse)."""
        dev = model_device(bridge)
        clean = capture_run(bridge, batch.clean, batch.end_pos, batch.answer_ids, rows)
        corrupt = capture_run(bridge, batch.corrupted, batch.end_pos, batch.answer_ids, rows)
        if base == "clean":
            return cls(bridge, batch, batch.clean.to(dev), clean, corrupt, rows)
        return cls(bridge, batch, batch.corrupted.to(dev), corrupt, clean, rows, False)

    @property
    def device(self) -> torch.device:
        return model_device(self.bridge)

    @property
    def source_tokens(self) -> torch.Tensor:
        """[n, pos] tokens of the source run, on the model's device."""
        src = self.batch.corrupted if self.base_is_clean else self.batch.clean
        return src[: self.n].to(self.device)

    def subset(self, m: int) -> PatchContext:
        """The same context restricted to its first ``m`` examples."""
        if m >= self.n:
            return self

        def cut(c: RunCache) -> RunCache:
            return RunCache(
                [t[:m] for t in c.z],
                [t[:m] for t in c.mlp_out],
                [t[:m] for t in c.resid_pre],
                c.final[:m],
                c.final_scale[:m],
                c.readout[:m],
            )

        return replace(  # the bridge, rows and base_is_clean kept
            self,
            batch=self.batch.subset(list(range(m))),
            base_tokens=self.base_tokens[:m],
            base=cut(self.base),
            source=cut(self.source),
        )

    def write(self, cache: RunCache, s: Sender) -> torch.Tensor:
        """The sender's residual write in ``cache`` at its position: [n, d_model]."""
        if s.kind == "head":
            w_o = self.bridge.W_O[s.layer, s.head]  # [d_head, d_model]
            return cache.z[s.layer][:, s.pos, s.head] @ w_o
        if s.kind == "mlp":
            return cache.mlp_out[s.layer][:, s.pos]
        if s.kind == "embed":
            return cache.resid_pre[0][:, s.pos]
        raise ValueError(f"unknown sender kind {s.kind!r}")

    def delta(self, s: Sender) -> torch.Tensor:
        """Source minus base write of ``s``: [n, d_model]."""
        return self.write(self.source, s) - self.write(self.base, s)


def _receiver_deltas(
    ctx: PatchContext,
    senders: Sequence[Sender],
    receivers: Sequence[Receiver],
    extra: Sequence[torch.Tensor] | None,
) -> list[torch.Tensor]:
    """Per receiver, the [c * n, d_model] sum added to its input (row block i = sender i)."""
    deltas = [ctx.delta(s) for s in senders] if extra is None else list(extra)
    zero = torch.zeros_like(deltas[0])
    out = []
    for r in receivers:
        rows = [d if upstream(s, r) else zero for s, d in zip(senders, deltas, strict=True)]
        out.append(torch.cat(rows))
    return out


def _logits_only(
    ctx: PatchContext, receivers: Sequence[Receiver], add: list[torch.Tensor], freeze_ln: bool
) -> EndReadout:
    """All receivers are the logits: unembed base final residual + deltas, no forward pass."""
    b = ctx.bridge
    end = ctx.end_pos
    c = add[0].shape[0] // ctx.n if add else 1
    x = ctx.base.final[:, end].repeat(c, 1)
    for r, d in zip(receivers, add, strict=True):
        if r.pos == end:
            x = x + d
    if freeze_ln:
        ln = b.ln_final.original_component
        scale = ctx.base.final_scale[:, end].repeat(c, 1)
        x = (x - x.mean(-1, keepdim=True)) / scale * ln.weight + ln.bias
    else:
        x = b.ln_final(x)
    return readout_from_resid(x, b.W_U, getattr(b, "b_U", None), ctx.batch.answer_ids)


def _hooks_for(receivers: Sequence[Receiver], add: list[torch.Tensor]) -> FwdHooks:
    groups: dict[str, list[tuple[Receiver, torch.Tensor]]] = defaultdict(list)
    for r, d in zip(receivers, add, strict=True):
        if r.kind == "mlp":
            groups[f"blocks.{r.layer}.ln2.hook_in"].append((r, d))
        elif r.kind == "head":
            groups[f"blocks.{r.layer}.attn.hook_{r.channel}_input"].append((r, d))
        else:
            groups["ln_final.hook_in"].append((r, d))

    def make(items: list[tuple[Receiver, torch.Tensor]]) -> Callable[..., torch.Tensor]:
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            x = x.clone()
            for r, d in items:
                if r.kind == "head":
                    x[:, r.pos, r.head] += d
                else:
                    x[:, r.pos] += d
            return x

        return hook

    return [(name, make(items)) for name, items in groups.items()]


@torch.no_grad()
def path_patch(
    ctx: PatchContext,
    senders: Sequence[Sender],
    receivers: Sequence[Receiver],
    freeze_ln: bool = False,
    deltas: Sequence[torch.Tensor] | None = None,
) -> EndReadout:
    """Patch every sender's paths into ``receivers``, one sender at a time (batched).

    Returns a readout of shape [n_senders, n]. ``deltas`` (one [n, d_model] per sender) replace
    the senders' own source - base writes (used for single neurons). ``freeze_ln`` keeps the final
    LayerNorm scale at its base value (logit receivers only).
    """
    if not senders:
        return EndReadout(
            torch.zeros(0, ctx.n, ctx.batch.answer_ids.numel(), dtype=torch.float64),
            torch.zeros(0, ctx.n, dtype=torch.float64),
        )
    for r in receivers:
        if r.kind == "head" and r.channel not in ("q", "k", "v"):
            raise ValueError(f"head receiver needs channel q, k or v, got {r.channel!r}")
    logits_only = all(r.kind == "logits" for r in receivers)
    if freeze_ln and not logits_only:
        raise ValueError("freeze_ln is defined for logit receivers only")
    per_chunk = max(1, ctx.rows // ctx.n)
    parts = []
    for i in range(0, len(senders), per_chunk):
        chunk = list(senders[i : i + per_chunk])
        dchunk = None if deltas is None else list(deltas[i : i + per_chunk])
        c = len(chunk)
        if not receivers:
            r0 = ctx.base.readout
            parts.append(EndReadout(r0.answer_logits.repeat(c, 1), r0.lse.repeat(c)))
            continue
        add = _receiver_deltas(ctx, chunk, receivers, dchunk)
        if logits_only:
            parts.append(_logits_only(ctx, receivers, add, freeze_ln))
            continue
        start = min(r.layer for r in receivers if r.kind != "logits")
        inp = (
            ctx.base_tokens.repeat(c, 1)
            if start == 0
            else ctx.base.resid_pre[start].repeat(c, 1, 1)
        )
        heads = any(r.kind == "head" for r in receivers)
        with split_qkv(ctx.bridge, heads):
            parts.append(
                run_end(
                    ctx.bridge,
                    inp,
                    ctx.end_pos,
                    ctx.batch.answer_ids,
                    _hooks_for(receivers, add),
                    start_at_layer=start,
                )
            )
    return EndReadout.cat(parts).reshape(len(senders), ctx.n)


@torch.no_grad()
def resid_patch(ctx: PatchContext, layer: int, pos: int, deltas: torch.Tensor) -> EndReadout:
    """Total effect of adding ``deltas`` [m, n, d_model] to the residual stream after block
    ``layer`` at ``pos`` (everything downstream recomputed): readout [m, n]."""
    m = deltas.shape[0]
    n_layers = ctx.bridge.cfg.n_layers
    per = max(1, ctx.rows // ctx.n)
    parts = []
    for i in range(0, m, per):
        d = deltas[i : i + per].reshape(-1, deltas.shape[-1])
        c = d.shape[0] // ctx.n
        if layer + 1 >= n_layers:
            recv = [Receiver("logits", n_layers, pos)]
            parts.append(_logits_only(ctx, recv, [d], freeze_ln=False))
            continue
        x = ctx.base.resid_pre[layer + 1].repeat(c, 1, 1).clone()
        x[:, pos] += d
        parts.append(
            run_end(ctx.bridge, x, ctx.end_pos, ctx.batch.answer_ids, start_at_layer=layer + 1)
        )
    return EndReadout.cat(parts).reshape(m, ctx.n)


def all_senders(
    n_layers: int, n_heads: int, positions: Sequence[int], embed: bool = False
) -> list[Sender]:
    """Every head and MLP at each position (layer-major; heads before the layer's MLP), with
    ``embed`` the token + position embedding of each position first."""
    out = []
    for pos in positions:
        if embed:
            out.append(Sender("embed", 0, pos))
        for layer in range(n_layers):
            out.extend(Sender("head", layer, pos, h) for h in range(n_heads))
            out.append(Sender("mlp", layer, pos))
    return out
