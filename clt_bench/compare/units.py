"""Units needed to recover the task: one definition for every kind of MLP-replacing unit.

Unit kinds (a unit is one neuron / feature at every position of the prompt):

- ``mlp_neurons``: unit (layer L, neuron i); activation ``blocks.L.mlp.hook_post``; it writes
  ``a * W_out[L][i]`` into MLP output L.
- ``clt_features`` / ``plt_features``: unit (read layer L, feature f); activation from the
  transcoder's encoder on ``hook_resid_mid`` (prompt by prompt, as the graphs encode); it writes
  ``a * W_dec[L -> T][f]`` into the MLP output of every target layer T.

Scope: every unit of the kind at every position. With ``delta_u = a_u(clean) - a_u(corrupted)``
per prompt and position (the 01-corrupted prompt) and S the set of units kept clean, the model
runs on the clean prompt (attention, LayerNorms and everything else live) with MLP output L
replaced by

    out_L(S) = mlp_out_L(clean) - sum_{u not in S} delta_u * W_{u -> L}.

S = every unit is the clean run exactly. S = {} puts every unit at its corrupted value: for
neurons every MLP output is the corrupted run's; for a transcoder every feature is corrupted and
its error, skip and bias terms stay clean (they are not units), so PD_0 differs by kind and is
reported per kind (variant ``error_clean``, the kind's plain name). Variant ``error_corrupted``
(kind ``<kind>_error_corrupted``, transcoders only) also puts the error term -- everything of the
MLP output that is not a unit's write, ``err = mlp_out - sum_u a_u W_u`` -- at its corrupted value
in every run of the curve:

    out_L(S) = mlp_out_L(clean) - sum_{u not in S} delta_u * W_{u -> L}
               - (err_L(clean) - err_L(corrupted)),

so S = {} is the corrupted MLP outputs exactly (the neurons' PD_0) and S = all is the clean run
with only the error term corrupted (below PD_clean when the error carries task information).

Ranking (the same criterion for every kind, estimated on the *ranking* half of the prompts): the
clean-minus-corrupt effect of unit u. A linear estimate for every unit -- sum over positions of
``delta_u * dPD/da_u``, averaged over the two endpoints S = {} and S = all (two-point integrated
gradients along the straight path the curve walks) -- then, for the ``candidates`` best, the
exact effect ``((PD({u}) - PD({})) + (PD(all) - PD(all minus u))) / 2``. Exact effects order the
candidates, linear estimates the rest; larger effect first.

Curves (on the *evaluation* half): ``PD_k`` = mean PD with the top k units clean, k = 0 .. all;
``normalized = (PD_k - PD_0) / (PD_clean - PD_0)`` with PD_clean the unpatched clean model's.
Units needed for a fraction: the smallest k whose normalized score reaches it.

Shapes: n prompts, pos positions, L layers, d = d_model, U_b units of block b, T_b its targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformer_lens.model_bridge import TransformerBridge

from clt_bench.activations.extract import capture
from clt_bench.baseline.neurons import curve_ks
from clt_bench.baseline.patching import model_device, run_end
from clt_bench.baseline.readout import per_example_pd
from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.errors import UserError
from clt_bench.features.ablation import pd_of
from clt_bench.graphs.local_replacement import encode_prompts
from clt_bench.models.bridge import mlps_replaced
from clt_bench.task.dataset import TaskBatch
from clt_bench.task.end_logits import end_only_hook

FRACTIONS = (0.5, 0.8, 0.9)


@dataclass
class UnitBlock:
    """One source layer's units: ``delta`` [n, pos, U], ``write`` [U, T, d] into ``targets``."""

    layer: int
    delta: torch.Tensor
    write: torch.Tensor
    targets: list[int]

    @property
    def n_units(self) -> int:
        return int(self.write.shape[0])


@dataclass
class UnitSet:
    """Every unit of one kind on a set of prompts, with the clean MLP outputs [n, pos, L, d];
    ``err_delta`` [n, pos, L, d]: clean minus corrupted error term, subtracted in every run
    (variant ``error_corrupted``), or None (``error_clean``)."""

    kind: str
    blocks: list[UnitBlock]
    mlp_clean: torch.Tensor
    err_delta: torch.Tensor | None = None

    @property
    def n_units(self) -> int:
        return sum(b.n_units for b in self.blocks)

    def offsets(self) -> list[int]:
        """Global index of each block's first unit (units are numbered block by block)."""
        return list(np.cumsum([0] + [b.n_units for b in self.blocks])[:-1])

    def unit_name(self, g: int) -> tuple[int, int]:
        """(source layer, index within the layer) of global unit ``g``."""
        for off, b in zip(self.offsets(), self.blocks, strict=True):
            if g < off + b.n_units:
                return b.layer, int(g - off)
        raise IndexError(g)

    def outs(self, keep: list[torch.Tensor]) -> torch.Tensor:
        """[n, pos, L, d] MLP outputs with the units where ``keep`` (per block [U]) is 1 clean."""
        out = self.mlp_clean.clone()
        if self.err_delta is not None:
            out -= self.err_delta
        for b, m in zip(self.blocks, keep, strict=True):
            drop = (1.0 - m).to(b.delta.dtype)
            w = torch.einsum("npu,utd->nptd", b.delta * drop, b.write)
            out[:, :, b.targets] -= w
        return out

    def all_clean(self) -> torch.Tensor:
        """[n, pos, L, d] MLP outputs with every unit clean (the clean run for ``error_clean``)."""
        if self.err_delta is None:
            return self.mlp_clean
        return self.mlp_clean - self.err_delta


def scoped(units: UnitSet, layers: Sequence[int], pos: int) -> UnitSet:
    """``units`` restricted to their writes into the MLP outputs of ``layers`` at position
    ``pos`` (e.g. a planted comparator: MLP4 and MLP5 at END). Every other write, and the error
    term elsewhere, stays clean in every run, so S = {} corrupts exactly those outputs -- for
    neurons and for a transcoder's ``error_corrupted`` variant alike."""
    keep = set(int(t) for t in layers)
    blocks = []
    for b in units.blocks:
        idx = [i for i, t in enumerate(b.targets) if t in keep]
        if not idx:
            continue
        delta = torch.zeros_like(b.delta)
        delta[:, pos] = b.delta[:, pos]
        blocks.append(UnitBlock(b.layer, delta, b.write[:, idx], [b.targets[i] for i in idx]))
    err = None
    if units.err_delta is not None:
        err = torch.zeros_like(units.err_delta)
        sel = sorted(keep)
        err[:, pos, sel] = units.err_delta[:, pos, sel]
    return UnitSet(units.kind, blocks, units.mlp_clean, err)


@torch.no_grad()
def neuron_units(
    bridge: TransformerBridge, clean: torch.Tensor, corrupted: torch.Tensor
) -> UnitSet:
    """Every MLP neuron of ``bridge`` on [n, pos] clean / corrupted tokens."""
    L = int(bridge.cfg.n_layers)
    post = [f"blocks.{i}.mlp.hook_post" for i in range(L)]
    outs = [f"blocks.{i}.hook_mlp_out" for i in range(L)]
    dev = model_device(bridge)
    c = capture(bridge, clean.to(dev), post + outs)
    x = capture(bridge, corrupted.to(dev), post)
    w_out = bridge.W_out.detach()  # [L, d_mlp, d]
    blocks = [UnitBlock(i, c[post[i]] - x[post[i]], w_out[i][:, None, :], [i]) for i in range(L)]
    return UnitSet("mlp_neurons", blocks, torch.stack([c[o] for o in outs], dim=2))


@torch.no_grad()
def feature_units(
    bridge: TransformerBridge,
    clt: CrossLayerTranscoder,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    kind: str = "clt_features",
    error: str = "clean",
) -> UnitSet:
    """Every feature of the transcoder ``clt`` on [n, pos] clean / corrupted tokens; ``error``
    "clean" or "corrupted": the variant of the error term (module docstring)."""
    if error not in ("clean", "corrupted"):
        raise UserError(f"units-needed error variant must be clean or corrupted, not {error!r}.")
    L = int(bridge.cfg.n_layers)
    mid = [f"blocks.{i}.hook_resid_mid" for i in range(L)]
    outs = [f"blocks.{i}.hook_mlp_out" for i in range(L)]
    dev = model_device(bridge)
    c = capture(bridge, clean.to(dev), mid + outs)
    x = capture(bridge, corrupted.to(dev), mid + (outs if error == "corrupted" else []))
    _, a_c = encode_prompts(clt, torch.stack([c[m] for m in mid], dim=2))  # [n, pos, L, F]
    _, a_x = encode_prompts(clt, torch.stack([x[m] for m in mid], dim=2))
    mlp = torch.stack([c[o] for o in outs], dim=2)
    blocks = []
    for src in range(L):
        tg = clt.target_layers(src)
        w = torch.stack([clt.layer_decoder(src, t).detach() for t in tg], dim=1).to(mlp.dtype)
        blocks.append(UnitBlock(src, (a_c - a_x)[:, :, src], w, tg))
    if error == "clean":
        return UnitSet(kind, blocks, mlp)
    # err(clean) - err(corrupted) = (mlp clean - mlp corrupted) - sum_u delta_u W_u
    err = mlp - torch.stack([x[o] for o in outs], dim=2)
    for b in blocks:
        err[:, :, b.targets] -= torch.einsum("npu,utd->nptd", b.delta, b.write)
    return UnitSet(f"{kind}_error_corrupted", blocks, mlp, err)


def _mlp_hooks(outs: torch.Tensor) -> list[tuple[str, Callable[..., torch.Tensor]]]:
    def hook(t: int) -> Callable[..., torch.Tensor]:
        return lambda y, hook: outs[:, :, t].to(y.dtype)

    return [(f"blocks.{t}.hook_mlp_out", hook(t)) for t in range(outs.shape[2])]


def _endpoint_grads(
    bridge: TransformerBridge,
    units: UnitSet,
    tokens: torch.Tensor,
    batch: TaskBatch,
    keep_all: bool,
) -> torch.Tensor:
    """dPD/d(MLP outputs) [n, pos, L, d] at S = all (``keep_all``) or S = {}, summed over prompts
    (each prompt's PD only depends on its own row)."""
    keep = [torch.full((b.n_units,), float(keep_all), device=b.delta.device) for b in units.blocks]
    with torch.no_grad():
        outs = units.outs(keep)
    outs.requires_grad_(True)
    with torch.enable_grad(), mlps_replaced(bridge):
        logits = bridge.run_with_hooks(
            tokens, fwd_hooks=[*_mlp_hooks(outs), end_only_hook(batch.end_pos)]
        )[:, -1]
        pd = pd_of(logits, batch)  # differentiable (full-vocabulary softmax)
        (grad,) = torch.autograd.grad(pd.sum(), outs)
    return grad


def linear_effects_per_position(
    bridge: TransformerBridge, units: UnitSet, batch: TaskBatch
) -> list[torch.Tensor]:
    """Per block [n, pos, U]: the two-point linear estimate of each unit's effect on each prompt's
    PD at each position, ``delta_u * W_{u->T} . dPD/d out_T`` (gradients averaged over S = {}
    and S = all)."""
    tokens = batch.clean.to(model_device(bridge))
    g0 = _endpoint_grads(bridge, units, tokens, batch, False)
    g = (g0 + _endpoint_grads(bridge, units, tokens, batch, True)) / 2
    # the gradient w.r.t. a_u is W_{u->T} . dPD/d out_T
    return [
        torch.einsum("nptd,utd->npu", g[:, :, b.targets], b.write) * b.delta for b in units.blocks
    ]


def linear_effects(bridge: TransformerBridge, units: UnitSet, batch: TaskBatch) -> torch.Tensor:
    """[n_units] mean over prompts of the two-point linear estimate of each unit's effect (summed
    over positions)."""
    parts = [e.sum(1).mean(0) for e in linear_effects_per_position(bridge, units, batch)]
    return torch.cat(parts).double().cpu()


@torch.no_grad()
def _pd_rows(
    bridge: TransformerBridge, tokens: torch.Tensor, outs: list[torch.Tensor], batch: TaskBatch
) -> torch.Tensor:
    """[len(outs), n] PD of the clean prompts ``tokens`` [n, pos] with MLP outputs each of
    ``outs`` [n, pos, L, d] (one forward pass: ``batch``'s prompts repeated len(outs) times)."""
    reps = len(outs)
    with mlps_replaced(bridge):  # every MLP output comes from ``outs``
        hooks = _mlp_hooks(torch.cat(outs))
        r = run_end(bridge, tokens.repeat(reps, 1), batch.end_pos, batch.answer_ids, hooks)
    return per_example_pd(r.reshape(reps, len(batch)), batch)


@torch.no_grad()
def exact_effects(
    bridge: TransformerBridge,
    units: UnitSet,
    batch: TaskBatch,
    cand: Sequence[int],
    rows: int = 512,
) -> torch.Tensor:
    """[len(cand)] mean over prompts of ((PD({u}) - PD({})) + (PD(all) - PD(all - u))) / 2."""
    n = len(batch)
    dev = units.mlp_clean.device
    tokens = batch.clean.to(dev)
    base0 = units.outs([torch.zeros(b.n_units, device=dev) for b in units.blocks])
    pd0 = _pd_rows(bridge, tokens, [base0], batch)[0]
    pd_all = _pd_rows(bridge, tokens, [units.all_clean()], batch)[0]
    offs = units.offsets()
    per = max(1, rows // (2 * n))
    out = []
    for i in range(0, len(cand), per):
        chunk = list(cand[i : i + per])
        xs = []
        for g in chunk:
            bi = max(j for j, o in enumerate(offs) if o <= g)
            b, u = units.blocks[bi], g - offs[bi]
            w = torch.einsum("np,td->nptd", b.delta[:, :, u], b.write[u])  # [n, pos, T, d]
            up, down = base0.clone(), units.all_clean().clone()
            up[:, :, b.targets] += w
            down[:, :, b.targets] -= w
            xs += [up, down]
        pd = _pd_rows(bridge, tokens, xs, batch).reshape(len(chunk), 2, n)
        eff = ((pd[:, 0] - pd0) + (pd_all - pd[:, 1])) / 2
        out.append(eff.mean(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def rank_units(
    bridge: TransformerBridge, units: UnitSet, batch: TaskBatch, candidates: int = 32
) -> tuple[list[int], np.ndarray]:
    """Global unit indices, most clean-minus-corrupt effect first, and each unit's score."""
    lin = linear_effects(bridge, units, batch)
    score = lin.clone()
    order = torch.argsort(lin, descending=True).tolist()
    cand = order[: max(candidates, 0)]
    if cand:
        score_c = exact_effects(bridge, units, batch, cand)
        # exact effects rank the candidates; the rest follow in linear order
        score[cand] = score_c
        rest = [g for g in order if g not in set(cand)]
        order = [cand[i] for i in torch.argsort(score_c, descending=True).tolist()] + rest
    return order, score.numpy()


@torch.no_grad()
def curve_pd(
    bridge: TransformerBridge,
    units: UnitSet,
    batch: TaskBatch,
    order: Sequence[int],
    ks: Sequence[int],
    rows: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt PD [len(ks), n] with the top k of ``order`` clean, and the clean model's [n]."""
    n = len(batch)
    dev = units.mlp_clean.device
    tokens = batch.clean.to(dev)
    offs = units.offsets()
    keep = [torch.zeros(b.n_units, device=dev) for b in units.blocks]
    block_of = np.searchsorted(np.asarray(offs), np.arange(units.n_units), side="right") - 1
    ranked = np.asarray(order, dtype=np.int64)
    outs, done = [], 0
    for k in ks:
        for g in ranked[done:k]:
            keep[block_of[g]][g - offs[block_of[g]]] = 1.0
        done = k
        outs.append(units.outs(keep))
    per = max(1, rows // n)
    pd = []
    for i in range(0, len(outs), per):
        pd.append(_pd_rows(bridge, tokens, outs[i : i + per], batch))
    clean = run_end(bridge, tokens, batch.end_pos, batch.answer_ids)
    return (torch.cat(pd).numpy(), per_example_pd(clean, batch).numpy())


def normalized(pd_k: np.ndarray, pd_clean: float) -> np.ndarray:
    """(PD_k - PD_0) / (PD_clean - PD_0) for a curve ``pd_k`` [m] whose first point is k = 0."""
    gap = pd_clean - pd_k[0]
    return (pd_k - pd_k[0]) / gap if gap != 0 else np.full_like(pd_k, np.nan)


def units_needed(ks: Sequence[int], norm: np.ndarray, fraction: float) -> int | None:
    """Smallest k whose normalized score reaches ``fraction``; None if no k does."""
    hits = [int(k) for k, v in zip(ks, norm, strict=True) if v >= fraction]
    return min(hits) if hits else None


def bootstrap_needed(
    ks: Sequence[int],
    pd: np.ndarray,
    clean: np.ndarray,
    fractions: Sequence[float] = FRACTIONS,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[float, tuple[float, float]]:
    """95 % interval of units needed per fraction, resampling prompts (``pd`` [m, n]).

    A resample whose curve never reaches the fraction counts as infinity. All resamples at once
    (the same draws, in the same order, as one ``rng.integers(0, n, n)`` per resample)."""
    rng = np.random.default_rng(seed)
    n = pd.shape[1]
    idx = rng.integers(0, n, (n_boot, n))  # [n_boot, n]
    curves = pd[:, idx].mean(2)  # [m, n_boot]
    gap = clean[idx].mean(1) - curves[0]  # [n_boot]
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(gap != 0, (curves - curves[0]) / np.where(gap != 0, gap, 1.0), np.nan)
    k_col = np.asarray(ks, dtype=np.float64)[:, None]
    out = {}
    for f in fractions:
        draws = np.where(norm >= f, k_col, np.inf).min(0)  # smallest k reaching f; inf: none
        with np.errstate(invalid="ignore"):  # between two infs numpy's lerp gives NaN: never
            lo, hi = (float(np.percentile(draws, q)) for q in (2.5, 97.5))
        out[f] = (np.inf if math.isnan(lo) else lo, np.inf if math.isnan(hi) else hi)
    return out


def split_halves(n: int) -> tuple[list[int], list[int]]:
    """Ranking prompts (even indices) and evaluation prompts (odd): both span every YY range of a
    YY-sorted balanced set."""
    if n < 2:
        raise UserError("the units-needed curve needs at least 2 prompts (one per half).")
    return list(range(0, n, 2)), list(range(1, n, 2))


@dataclass
class UnitsResult:
    """One unit kind's curve on the evaluation half."""

    kind: str
    n_units: int
    ks: list[int]
    pd: np.ndarray  # [m, n_eval] per-prompt PD at each k
    clean: np.ndarray  # [n_eval] clean model PD
    order: list[int]
    score: np.ndarray  # [n_units] ranking score (ranking half)
    names: list[tuple[int, int]]  # (layer, index) of the top units in order

    @property
    def prob_diff(self) -> np.ndarray:
        mean: np.ndarray = self.pd.mean(1)
        return mean

    @property
    def normalized(self) -> np.ndarray:
        return normalized(self.prob_diff, float(self.clean.mean()))

    def needed(self, fraction: float) -> int | None:
        return units_needed(self.ks, self.normalized, fraction)


def units_needed_curve(
    bridge: TransformerBridge,
    make_units: Callable[[torch.Tensor, torch.Tensor], UnitSet],
    batch: TaskBatch,
    dense: int = 32,
    candidates: int = 32,
    top_names: int = 20,
    extra_ks: Sequence[int] = (),
) -> UnitsResult:
    """Rank one kind's units on the ranking half of ``batch``; its curve on the other half.

    ``make_units(clean_tokens, corrupted_tokens)`` builds the UnitSet on given prompts; the curve's
    points are 0, ``dense`` log-spaced ones and those of ``extra_ks`` that do not exceed the
    number of units."""
    rank_idx, eval_idx = split_halves(len(batch))
    rb, eb = batch.subset(rank_idx), batch.subset(eval_idx)
    ranking_units = make_units(rb.clean, rb.corrupted)
    order, score = rank_units(bridge, ranking_units, rb, candidates)
    del ranking_units
    units = make_units(eb.clean, eb.corrupted)
    K = units.n_units
    extra = [k for k in extra_ks if k <= K]
    ks = sorted({0, K, *curve_ks(K, dense), *extra})
    pd, clean = curve_pd(bridge, units, eb, order, ks)
    names = [units.unit_name(g) for g in order[:top_names]]
    return UnitsResult(units.kind, K, list(ks), pd, clean, list(order), score, names)
