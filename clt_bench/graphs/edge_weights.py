"""Edge weights by batched backward passes through the frozen replacement model
(docs/methods.md#graphs).

One forward pass is differentiated once (``torch.func.vjp``); ``Attributor.rows`` injects one
gradient per batch row (``torch.func.vmap``): row b selects one node value (a feature
pre-activation or a target) and the gradients at the leaves give its incoming edge from every
source: ``a_s * d value / d a_s`` (features), ``e . d value / d mlp_out`` (error nodes),
``embed . d value / d embed`` (tokens). ``constant_terms`` runs the frozen model with every source
at zero, which (the model being affine in its sources) gives each node's constant term exactly;
``RowAttribution.pos_embed`` / ``b_dec`` split off the positional embeddings and b_dec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clt_bench.graphs.local_replacement import FrozenRun, ReplacementModel, run_frozen, zero_leaves

SOURCE_FEATURE, SOURCE_ERROR, SOURCE_TOKEN = 0, 1, 2


@dataclass
class RowAttribution:
    """Incoming edges of B rows (batched over n prompts: one row = one node in every prompt)."""

    features: torch.Tensor  # [B, K] over the clean active features of all prompts (layer-major)
    errors: torch.Tensor  # [B, n, L, pos]
    tokens: torch.Tensor  # [B, n, pos]
    pos_embed: torch.Tensor  # [B, n] constant term carried by positional embeddings
    b_dec: torch.Tensor  # [B, n] constant term carried by the CLT's decoder bias


def feature_table(rm: ReplacementModel) -> torch.Tensor:
    """[K, 4] rows (prompt, layer, pos, feature) of the clean active features, layer-major."""
    rows = []
    for layer, idx in enumerate(rm.active_idx):
        lay = torch.full((len(idx), 1), layer, dtype=torch.long, device=idx.device)
        rows.append(torch.cat([idx[:, :1], lay, idx[:, 1:]], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 4, dtype=torch.long)


def feature_activations(rm: ReplacementModel, which: str = "acts") -> torch.Tensor:
    """[K] clean activations (or pre-activations) in ``feature_table`` order."""
    return torch.cat([rm.active_values(layer, which) for layer in range(rm.n_layers)])


class Attributor:
    """One frozen forward pass of ``rm``, differentiated once (``torch.func.vjp``).

    ``output_fn`` maps the ``FrozenRun`` to the node values to attribute (any shape);
    ``rows(grad_rows)`` then injects one cotangent per batch row ([B, *value.shape]) and returns
    every source's edge weight into each row. The rows are batched with ``torch.func.vmap``.
    """

    def __init__(
        self,
        rm: ReplacementModel,
        output_fn: Callable[[FrozenRun], torch.Tensor],
        modes: str = "frozen",
    ) -> None:
        self.rm = rm
        self.n_layers = rm.n_layers

        def f(*leaves: torch.Tensor) -> torch.Tensor:
            return output_fn(run_frozen(rm, modes=modes, leaves=leaves))

        value, self._vjp = torch.func.vjp(f, *zero_leaves(rm))[:2]
        self.value: torch.Tensor = value.detach()
        self._acts = feature_activations(rm)
        self._b_dec = (
            rm.clt.b_dec.detach().to(rm.dtype) / rm.clt.output_scale.detach().to(rm.dtype)[:, None]
        )

    def rows_for(self, idx: torch.Tensor) -> RowAttribution:
        """The rows of the entries ``idx`` of the 1-D ``value`` (one-hot output gradients)."""
        v = self.value
        grad = torch.zeros(len(idx), v.shape[0], dtype=v.dtype, device=v.device)
        grad[torch.arange(len(idx)), idx] = 1.0
        return self.rows(grad)

    def rows(self, grad_rows: torch.Tensor) -> RowAttribution:
        rm, L = self.rm, self.n_layers
        grads = torch.func.vmap(self._vjp)(grad_rows.to(self.value.dtype))
        feat = torch.cat(grads[:L], dim=1) * self._acts
        errs, bdec = [], grads[L].new_zeros(())
        for layer in range(L):
            gm = grads[L + layer]  # [B, n, pos, d]
            errs.append((gm * rm.errors[:, :, layer]).sum(-1))
            bdec = bdec + (gm * self._b_dec[layer]).sum((-1, -2))
        g_emb, g_pos = grads[2 * L], grads[2 * L + 1]
        return RowAttribution(
            features=feat.detach(),
            errors=torch.stack(errs, dim=2).detach(),
            tokens=(g_emb * rm.embed).sum(-1).detach(),
            pos_embed=(g_pos * rm.pos_embed).sum((-1, -2)).detach(),
            b_dec=bdec.detach(),
        )


@torch.no_grad()
def constant_terms(
    rm: ReplacementModel, directions: torch.Tensor, modes: str = "frozen"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Node values with every source (tokens, features, errors) at zero.

    Returns ([K] feature pre-activation constants, [n, n_t] target constants) for ``directions``
    [n, n_t, V]. In ``linear`` mode the linearised features are not sources but respond.
    """
    run0 = run_frozen(
        rm,
        modes=modes,
        acts=torch.zeros_like(rm.acts),
        embed=torch.zeros_like(rm.embed),
        errors=torch.zeros_like(rm.errors),
    )
    return torch.cat(run0.pre), torch.einsum("nv,ntv->nt", run0.logits, directions)


def as_prompt_directions(directions: torch.Tensor, n: int) -> torch.Tensor:
    """[n_t, V] or [n, n_t, V] -> [n, n_t, V] in the model's dtype."""
    if directions.dim() == 2:
        directions = directions[None].expand(n, -1, -1)
    if directions.dim() != 3 or directions.shape[0] != n:
        raise ValueError("directions must be [n_targets, vocab] or [n_prompts, n_targets, vocab]")
    return directions


@dataclass
class TargetAttribution:
    """Attributions of one prompt's targets to every source (see ``target_attributions``).

    ``values[t, s]`` = a_s * d target_t / d a_s (``source_kind[s]``: 0 feature, 1 error node,
    2 token); ``source_index[s]`` = (layer, pos, feature id) for features, (layer, pos, -1) for
    error nodes and (-1, pos, token id) for tokens. ``constant[t]`` is the part no source carries,
    so ``values[:, kind != 0].sum(1) + constant == target_values`` for total effects.
    """

    source_kind: torch.Tensor  # [S]
    source_index: torch.Tensor  # [S, 3]
    activations: torch.Tensor  # [S] feature activation, error-vector norm, embedding norm
    values: torch.Tensor  # [n_targets, S]
    constant: torch.Tensor  # [n_targets]
    target_values: torch.Tensor  # [n_targets]
    mode: str  # "total" (all paths, linearised features) | "direct" (edges of the graph)

    @property
    def feature_mask(self) -> torch.Tensor:
        return self.source_kind == SOURCE_FEATURE

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([n_f, 3] (layer, pos, feature), [n_targets, n_f] attributions) of the features."""
        m = self.feature_mask
        return self.source_index[m], self.values[:, m]


def target_attributions_batch(
    rm: ReplacementModel,
    directions: torch.Tensor,
    *,
    batch_size: int = 64,
    mode: str = "total",
) -> list[TargetAttribution]:
    """Attribute target directions to every source, for all prompts of ``rm`` at once.

    ``directions`` [n_t, V] (shared) or [n, n_t, V] (per prompt) are read at the last position.
    Batch row b injects target b into every prompt at once, so n prompts x n_t targets cost
    ceil(n_t / batch_size) backward passes. ``mode="total"`` linearises the active features (all
    paths: a_s * d target / d a_s in the frozen model); ``"direct"`` keeps them frozen (the
    graph's direct edges).
    """
    if mode not in ("total", "direct"):
        raise ValueError("mode must be 'total' or 'direct'")
    n, L, P = rm.n_prompts, rm.n_layers, rm.n_pos
    dirs = as_prompt_directions(directions.to(rm.dtype).to(rm.tokens.device), n)
    n_t = dirs.shape[1]
    modes = "linear" if mode == "total" else "frozen"
    att = Attributor(rm, lambda run: torch.einsum("nv,ntv->nt", run.logits, dirs), modes)
    values = att.value  # [n, n_t]
    parts: list[RowAttribution] = []
    for start in range(0, n_t, batch_size):
        rows = torch.arange(start, min(start + batch_size, n_t), device=values.device)
        grad = torch.zeros(len(rows), n, n_t, dtype=values.dtype, device=values.device)
        grad[torch.arange(len(rows)), :, rows] = 1.0
        parts.append(att.rows(grad))
    feat = torch.cat([p.features for p in parts]).detach()  # [n_t, K]
    errs = torch.cat([p.errors for p in parts]).detach()  # [n_t, n, L, P]
    toks = torch.cat([p.tokens for p in parts]).detach()  # [n_t, n, P]
    _, const = constant_terms(rm, dirs, modes)
    table = feature_table(rm)
    acts = feature_activations(rm)
    out = []
    for i in range(n):
        sel = table[:, 0] == i
        f_idx = table[sel][:, 1:]
        e_idx = torch.stack(torch.meshgrid(torch.arange(L), torch.arange(P), indexing="ij"), -1)
        e_idx = torch.cat([e_idx.reshape(-1, 2), torch.full((L * P, 1), -1)], 1).to(f_idx)
        t_idx = torch.stack(
            [torch.full((P,), -1).to(f_idx), torch.arange(P).to(f_idx), rm.tokens[i].to(f_idx)], 1
        )
        kinds = torch.cat(
            [
                torch.full((len(f_idx),), SOURCE_FEATURE),
                torch.full((L * P,), SOURCE_ERROR),
                torch.full((P,), SOURCE_TOKEN),
            ]
        )
        act = torch.cat(
            [
                acts[sel],
                rm.errors[i].transpose(0, 1).norm(dim=-1).reshape(-1),
                rm.embed[i].norm(dim=-1),
            ]
        )
        vals = torch.cat([feat[:, sel], errs[:, i].reshape(n_t, -1), toks[:, i]], dim=1)
        out.append(
            TargetAttribution(
                source_kind=kinds.to(f_idx.device),
                source_index=torch.cat([f_idx, e_idx, t_idx]),
                activations=act.detach(),
                values=vals,
                constant=const[i].detach(),
                target_values=values[i].detach(),
                mode=mode,
            )
        )
    return out
