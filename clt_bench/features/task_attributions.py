"""Attributions of every active CLT feature to the answer logits, the task's logit difference and
its probability difference, over the task prompts (one per YY).

All targets here are linear in the residual stream at END that enters the unembedding
(``unembed.hook_in``; the final LayerNorm is frozen in the local replacement model):

- answer logit z (A targets, A = the task's ``answers.count``):
  ``x_END . W_U[:, id_z] + b_U[id_z]``;
- the task's logit difference: ``sum_z c_z(YY) * logit_z`` with the graphs' shift-invariant
  coefficients of the task's relation (``clt_bench.graphs.targets.relation_coefficients``:
  +1/n_correct on the answers the relation calls correct -- ZZ > YY, ZZ < YY or ZZ = the answer --
  and -1/n_other on the rest, summing to zero), the target the features are ranked by;
- first-order probability difference: ``x_END . (W_U g)`` with ``g = dPD/dlogits`` at the clean
  logits (``g_v = p_v (c_v - PD)``, c_v = 0 off the answers; ``c`` from
  ``task.metrics.pd_coefficients``: +-1 by side for gt/lt, +1 on the answer and -1 on the most
  likely other answer for exact), i.e. a feature's attribution to it is its first-order
  contribution to PD.

Reading the targets before the unembedding (instead of through the [pos, vocab] logits) makes a
backward row cost a pass through the frozen layers only. Attributions are a_s * d target / d a_s in
``clt_bench.graphs``' local replacement model (``run_frozen``): *total* effects with the active
features linearised (``modes="linear"``) for the logit difference and PD, *direct* effects (features
frozen, the graph's edges) for the answer logits by default. One backward row per target gives the
gradients at the MLP outputs; a feature acts only through its decoder writes, so its attribution is
``a * sum_t W_dec[l -> t] . grad_t`` (``feature_effects``; equal to ``row_attributions``, tested),
which also splits its effect on the logit difference exactly over the layers it writes.

Results are kept sparse, per (prompt, feature) with the feature aggregated over positions.
Shapes: n prompts, pos positions, L layers, F features per layer, R (prompt, feature) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.errors import UserError
from clt_bench.graphs.edge_weights import Attributor, feature_table
from clt_bench.graphs.local_replacement import ReplacementModel, build_replacement, run_frozen
from clt_bench.graphs.targets import relation_coefficients
from clt_bench.task.dataset import (
    TaskBatch,
    one_per_yy,  # noqa: F401  (re-exported)
)

POS_CLASSES = ("YY", "END", "other")


def target_rows(n_answers: int) -> tuple[int, int]:
    """The rows of the logit difference and of PD among the targets: after the answer logits."""
    return n_answers, n_answers + 1


@dataclass
class TaskAttributions:
    """Sparse per-(prompt, feature) attributions; ``key = layer * F + feature``.

    ``pair_prompt`` [R], ``pair_key`` [R]; ``answer`` [R, A] effect on each of the task's A answer
    logits;
    ``logit_diff`` [R] and ``pd`` [R] effects on the two task targets; ``pos_logit_diff`` [R, 3]
    the logit-diff effect split by position class (YY, END, other); ``write_effects`` [R, L] split
    by written layer; ``act_sum`` [R] activation summed over positions. ``act_prompt``/``act_pos``/
    ``act_key``/``act_value`` [A]: every active (prompt, pos, feature) and its activation.
    ``direct_x`` [R, d] (float32): the feature's direct effect (features frozen) on the
    unembedding input at END, summed over positions; ``x_end`` [n, d] that input in the clean run.
    """

    n_features: int
    n_layers: int
    yy: np.ndarray  # [n]
    yy_pos: int
    end_pos: int
    pair_prompt: np.ndarray
    pair_key: np.ndarray
    answer: np.ndarray
    logit_diff: np.ndarray
    pd: np.ndarray
    pos_logit_diff: np.ndarray
    write_effects: np.ndarray
    act_sum: np.ndarray
    act_prompt: np.ndarray
    act_pos: np.ndarray
    act_key: np.ndarray
    act_value: np.ndarray
    direct_x: np.ndarray
    x_end: np.ndarray
    clean_prob_diff: float
    clean_logit_diff: float
    pd_direct: np.ndarray | None = None  # [R] direct first-order PD contribution per pair
    relation: str = "gt"  # the task's relation (what the two task targets score)

    @property
    def n_prompts(self) -> int:
        return len(self.yy)

    @property
    def n_answers(self) -> int:
        """The task's answer count A (the width of ``answer``)."""
        return int(self.answer.shape[1])

    def split_key(self, key: int) -> tuple[int, int]:
        return divmod(int(key), self.n_features)


def _unembed(bridge) -> tuple[torch.Tensor, torch.Tensor]:
    W_U = bridge.W_U.detach()
    b_U = getattr(bridge, "b_U", None)
    if b_U is None:
        return W_U, torch.zeros(W_U.shape[1], dtype=W_U.dtype, device=W_U.device)
    return W_U, b_U.detach()


def _run_with_final(rm: ReplacementModel, mode: str):
    """``run_frozen(rm, modes=mode, leaves=True)`` and the unembedding input [n, d] at END."""
    cap: dict[str, torch.Tensor] = {}
    hp = rm.bridge.hook_dict["unembed.hook_in"]
    handle = hp.register_forward_hook(lambda mod, inp, out: cap.__setitem__("x", out))
    try:
        run = run_frozen(rm, modes=mode, leaves=True)
    finally:
        handle.remove()
    return run, cap["x"][:, -1]


def _mlp_grads(run, targets: torch.Tensor, rows: list[int], retain: bool) -> list[torch.Tensor]:
    """Per layer [len(rows), n, pos, d]: d targets[:, row] / d mlp_out[layer] (one backward pass
    per target row, each batched over the prompts), through the run's frozen model.
    Plain backward passes (no vmap), so any autograd function in the frozen model works.
    """
    L = len(run.mlp_leaves)
    out: list[list[torch.Tensor]] = [[] for _ in range(L)]
    for j, row in enumerate(rows):
        last = j == len(rows) - 1
        g = torch.autograd.grad(
            targets[:, row].sum(),
            run.mlp_leaves,
            retain_graph=retain or not last,
            allow_unused=True,
        )
        for layer in range(L):
            out[layer].append(
                torch.zeros_like(run.mlp_leaves[layer]) if g[layer] is None else g[layer].detach()
            )
    return [torch.stack(o) for o in out]


def feature_effects(
    rm: ReplacementModel, g_mlp: list[torch.Tensor], split: bool = True
) -> torch.Tensor:
    """Effect of each active feature (``feature_table`` order) on B targets: [B, K, L] split by
    the layer it writes (``split``) or [B, K] summed: ``a * W_dec[l -> t] . g_mlp[t][b, prompt,
    pos]``.

    A feature acts on the rest of the model only through its decoder writes, so with ``g_mlp`` the
    gradients at the MLP outputs this equals ``row_attributions``' ``a * d target / d a`` summed
    over t (direct effects when ``g_mlp`` comes from a ``frozen`` run, total from ``linear``).
    Features are grouped by (prompt, pos) -- ``feature_table`` lists them that way within a layer
    -- so each group costs one [B, T*d] x [T*d, k_q] product.
    """
    clt, L = rm.clt, rm.n_layers
    table = feature_table(rm)
    acts = torch.cat([rm.active_values(layer) for layer in range(L)]).detach()
    B, n, P, d = g_mlp[0].shape
    dev = g_mlp[0].device
    out = torch.zeros(B, len(table), L if split else 1, dtype=torch.float64, device=dev)
    start = 0
    for layer in range(L):
        k = len(rm.active_idx[layer])
        if k == 0:
            continue
        rows = slice(start, start + k)
        start += k
        tg = clt.target_layers(layer)
        f, a = table[rows, 3], acts[rows]
        dec = torch.stack([clt.layer_decoder(layer, t).detach().to(rm.dtype)[f] for t in tg], 1)
        dec = dec * a[:, None, None]  # [k, T, d]
        G = torch.stack([g_mlp[t] for t in tg], 3).reshape(B, n * P, len(tg), d)
        q = table[rows, 0] * P + table[rows, 2]  # (prompt, pos) group of each feature, sorted
        counts = torch.bincount(q, minlength=n * P)
        first = torch.cumsum(counts, 0) - counts
        j = torch.arange(k, device=q.device) - first[q]  # index within its group
        pad = torch.zeros(n * P, int(counts.max()), len(tg), d, dtype=dec.dtype, device=dev)
        pad[q, j] = dec
        if split:  # [groups, max_k, T, B]
            res = torch.einsum("qktd,bqtd->qktb", pad, G)[q, j]  # [k, T, B]
            out[:, rows, tg[0] : tg[-1] + 1] = res.permute(2, 0, 1).double()
        else:
            res = torch.bmm(
                pad.reshape(n * P, pad.shape[1], -1), G.reshape(B, n * P, -1).permute(1, 2, 0)
            )[q, j]  # [k, B]
            out[:, rows, 0] = res.T.double()
    return out if split else out[..., 0]


def _direct_on_end(
    rm: ReplacementModel, rows_per_pass: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """([K, d] direct effect of each active feature on x_END, [n, d] x_END) in the frozen model."""
    cap: dict[str, torch.Tensor] = {}
    handle = rm.bridge.hook_dict["unembed.hook_in"].register_forward_hook(
        lambda mod, inp, out: cap.__setitem__("x", out)
    )
    try:
        attributor = Attributor(rm, lambda run: cap["x"][:, -1], modes="frozen")
    finally:
        handle.remove()
    x_end = attributor.value  # [n, d]
    n, d = x_end.shape
    parts = []
    for start in range(0, d, rows_per_pass):
        b = torch.arange(start, min(start + rows_per_pass, d))
        grad = torch.zeros(len(b), n, d, dtype=x_end.dtype, device=x_end.device)
        grad[torch.arange(len(b)), :, b] = 1.0
        parts.append(attributor.rows(grad).features)  # [B, K]
    return torch.cat(parts).T.float(), x_end


def _target_matrix(
    rm: ReplacementModel, batch: TaskBatch, W_U: torch.Tensor, b_U: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per prompt the [d, A + 2] target directions on x_END, the [A + 2] offsets and PD [n]."""
    ids = batch.answer_ids.to(W_U.device)
    dt = rm.dtype
    logits = rm.logits.double()  # [n, V]
    p = torch.softmax(logits, -1)
    c = batch.pd_coefficients(p[:, ids])  # [n, A]: PD = (c * p).sum(-1) at the clean logits
    # the graphs' task target (zero-sum coefficients: shift-invariant)
    ans = batch.exact_answers()
    c_ld = relation_coefficients(batch.yy, batch.relation, batch.n_answers, ans)
    c_ld = c_ld.to(logits.device)
    pd = (p[:, ids] * c).sum(-1)  # [n]
    g = -p * pd[:, None]
    g[:, ids] = p[:, ids] * (c - pd[:, None])
    Wa = W_U[:, ids].to(dt)  # [d, A]
    dirs = torch.cat(
        [
            Wa[None].expand(len(pd), -1, -1),
            (Wa.double() @ c_ld.T).T[:, :, None].to(dt),  # [n, d, 1] logit diff
            (g @ W_U.double().T)[:, :, None].to(dt),  # [n, d, 1] first-order PD
        ],
        dim=2,
    )  # [n, d, A + 2]
    ba = b_U[ids].double()
    off = torch.cat(
        [
            ba[None].expand(len(pd), -1),
            (c_ld * ba).sum(-1, keepdim=True),
            (g @ b_U.double())[:, None],
        ],
        dim=1,
    ).to(dt)  # [n, A + 2]
    return dirs, off, pd


def _chunk(
    rm: ReplacementModel,
    batch: TaskBatch,
    W_U: torch.Tensor,
    b_U: torch.Tensor,
    heatmap_mode: str,
    direct_effects: bool = True,
) -> dict[str, torch.Tensor]:
    L = rm.n_layers
    n_ans = batch.n_answers
    t_ld, t_pd = target_rows(n_ans)
    dirs, off, pd = _target_matrix(rm, batch, W_U, b_U)
    ids = batch.answer_ids.to(rm.logits.device)
    # total effects (linearised features) on the logit difference and first-order PD
    run, x_end = _run_with_final(rm, "linear")
    targets = torch.einsum("nd,ndt->nt", x_end, dirs) + off  # [n, A + 2]
    if not torch.allclose(targets[:, :n_ans].detach(), rm.logits[:, ids], atol=1e-3, rtol=1e-3):
        raise UserError(
            "the unembedding input does not reproduce the model's answer logits; "
            "this model's unembedding is not x @ W_U + b_U."
        )
    g_task = _mlp_grads(run, targets, [t_ld, t_pd], retain=heatmap_mode == "total")
    task = feature_effects(rm, g_task)  # [2, K, L]
    if heatmap_mode == "total":
        g_ans = _mlp_grads(run, targets, list(range(n_ans)), retain=False)
        answers = feature_effects(rm, g_ans, split=False)  # [A, K]
    del run
    if direct_effects:
        # direct effects (features frozen) on every coordinate of x_END: one row per basis
        # vector, batched with clt_bench.graphs' Attributor (functorch VJP)
        direct, x_end = _direct_on_end(rm)
    else:  # not wanted (left 0): most of the cost of a chunk in "direct" heatmap mode
        direct = torch.zeros(len(feature_table(rm)), x_end.shape[-1], device=x_end.device)
    if heatmap_mode == "direct":
        answers = (direct.double() @ W_U[:, ids].double()).T  # [A, K]
    table = feature_table(rm)  # [K, 4] (prompt, layer, pos, feature)
    acts = torch.cat([rm.active_values(layer) for layer in range(L)]).detach()
    write = task[0]  # [K, L]
    feat = torch.cat([answers.double(), task.sum(-1)])  # [A + 2, K]
    # direct first-order PD contribution: direct effect on x_END . the prompt's PD direction
    pd_direct = (direct.double() * dirs[table[:, 0], :, t_pd].double()).sum(-1)  # [K]
    return {
        "table": table.cpu(),
        "acts": acts.detach().cpu(),
        "feat": feat.cpu(),
        "pd_direct": pd_direct.cpu(),
        "write": write.cpu(),
        "direct": direct.cpu(),
        "x_end": x_end.detach().cpu(),
        "pd": pd.cpu(),
        "ld": targets[:, t_ld].detach().cpu(),
    }


def task_attributions(
    bridge,
    clt: CrossLayerTranscoder,
    batch: TaskBatch,
    prompts_per_pass: int = 16,
    heatmap_mode: str = "direct",
    progress: bool = True,
    direct_effects: bool = True,
) -> TaskAttributions:
    """Attribute the answer logits, the logit difference and PD of every prompt of ``batch``.

    ``heatmap_mode``: "direct" (the answer-logit attributions are the graph's direct edges,
    features frozen: fast) or "total" (all paths, features linearised: ~10x slower on CPU). The
    logit difference, PD and the write split are always total effects. The direct effects on
    the END residual (``direct_x``) come from one backward row per d_model coordinate;
    ``direct_effects=False`` skips them (``direct_x``, ``pd_direct`` and, in "direct" mode, the
    answer attributions are then 0) for callers that read only the total effects.
    """
    if heatmap_mode not in ("direct", "total"):
        raise UserError(f"unknown heatmap mode '{heatmap_mode}' (direct or total).")
    F, L = clt.spec.n_features, clt.n_layers
    W_U, b_U = _unembed(bridge)
    parts = []
    n = len(batch)
    for start in tqdm(
        range(0, n, prompts_per_pass), desc="feature attributions", disable=not progress
    ):
        sub = batch.subset(list(range(start, min(start + prompts_per_pass, n))))
        rm = build_replacement(bridge, clt, sub.clean)
        out = _chunk(rm, sub, W_U, b_U, heatmap_mode, direct_effects)
        out["table"][:, 0] += start
        parts.append(out)
        del rm
    table = torch.cat([p["table"] for p in parts])
    feat = torch.cat([p["feat"] for p in parts], dim=1).double()  # [A + 2, K]
    n_ans = batch.n_answers
    t_ld, t_pd = target_rows(n_ans)
    acts = torch.cat([p["acts"] for p in parts]).double()
    write = torch.cat([p["write"] for p in parts])
    direct = torch.cat([p["direct"] for p in parts])
    prompt, layer, pos, fid = (table[:, j] for j in range(4))
    key = layer * F + fid
    pair = prompt * (L * F) + key
    uniq, inv = torch.unique(pair, return_inverse=True)
    R = len(uniq)

    def agg(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(R, *v.shape[1:], dtype=torch.float64)
        return out.index_add_(0, inv, v.double())

    pclass = torch.where(pos == batch.yy_pos, 0, torch.where(pos == batch.end_pos, 1, 2))
    pos_ld = torch.zeros(len(table), 3, dtype=torch.float64)
    pos_ld[torch.arange(len(table)), pclass] = feat[t_ld]
    pd_all = torch.cat([p["pd"] for p in parts])
    ld_all = torch.cat([p["ld"] for p in parts])
    return TaskAttributions(
        n_features=F,
        n_layers=L,
        yy=batch.yy.numpy().copy(),
        yy_pos=batch.yy_pos,
        end_pos=batch.end_pos,
        pair_prompt=(uniq // (L * F)).numpy(),
        pair_key=(uniq % (L * F)).numpy(),
        answer=agg(feat[:n_ans].T).numpy(),
        logit_diff=agg(feat[t_ld]).numpy(),
        pd=agg(feat[t_pd]).numpy(),
        pos_logit_diff=agg(pos_ld).numpy(),
        write_effects=agg(write).numpy(),
        act_sum=agg(acts).numpy(),
        act_prompt=prompt.numpy(),
        act_pos=pos.numpy(),
        act_key=key.numpy(),
        act_value=acts.numpy(),
        direct_x=agg(direct).float().numpy(),
        x_end=torch.cat([p["x_end"] for p in parts]).numpy(),
        clean_prob_diff=float(pd_all.mean()),
        clean_logit_diff=float(ld_all.mean()),
        pd_direct=agg(torch.cat([p["pd_direct"] for p in parts])).numpy(),
        relation=batch.relation,
    )


def influence_ranking(att: TaskAttributions) -> tuple[np.ndarray, np.ndarray]:
    """Features ranked by aggregate influence on the target: sum over prompts of |logit-diff
    attribution| (each prompt's attribution summed over positions). Returns (keys, scores)."""
    keys, inv = np.unique(att.pair_key, return_inverse=True)
    score = np.zeros(len(keys))
    np.add.at(score, inv, np.abs(att.logit_diff))
    order = np.argsort(-score, kind="stable")
    return keys[order], score[order]


def feature_heatmap(att: TaskAttributions, key: int, yy_values: np.ndarray) -> np.ndarray:
    """[len(yy_values), A] mean attributed effect on each of the task's A answer logits per YY (0
    where inactive in that YY's prompts, NaN where no prompt has that YY)."""
    heat = np.zeros((len(yy_values), att.n_answers))
    count = np.array([(att.yy == y).sum() for y in yy_values], dtype=np.float64)
    row_of = {int(y): r for r, y in enumerate(yy_values)}
    sel = np.nonzero(att.pair_key == key)[0]
    for r in sel:
        y = int(att.yy[att.pair_prompt[r]])
        if y in row_of:
            heat[row_of[y]] += att.answer[r]
    with np.errstate(invalid="ignore", divide="ignore"):
        heat = heat / count[:, None]
    heat[count == 0] = np.nan
    return heat


def feature_activations_matrix(att: TaskAttributions, key: int) -> np.ndarray:
    """[n_prompts, pos] activations of one feature (0 where inactive)."""
    n_pos = int(max(att.act_pos.max(initial=0), att.end_pos)) + 1
    out = np.zeros((att.n_prompts, n_pos))
    sel = att.act_key == key
    out[att.act_prompt[sel], att.act_pos[sel]] = att.act_value[sel]
    return out


def per_feature_sums(att: TaskAttributions, keys: np.ndarray) -> dict[str, np.ndarray]:
    """Per feature in ``keys``: mean over prompts of its logit-diff and PD attributions, the
    logit-diff split by position class [k, 3] and by written layer [k, L] (means over prompts)."""
    idx = {int(k): i for i, k in enumerate(keys)}
    k = len(keys)
    out = {
        "logit_diff": np.zeros(k),
        "pd": np.zeros(k),
        "pd_direct": np.zeros(k),
        "pos": np.zeros((k, 3)),
        "write": np.zeros((k, att.n_layers)),
        "n_prompts": np.zeros(k, dtype=int),
    }
    for r, key in enumerate(att.pair_key):
        i = idx.get(int(key))
        if i is None:
            continue
        out["logit_diff"][i] += att.logit_diff[r]
        out["pd"][i] += att.pd[r]
        if att.pd_direct is not None:
            out["pd_direct"][i] += att.pd_direct[r]
        out["pos"][i] += att.pos_logit_diff[r]
        out["write"][i] += att.write_effects[r]
        out["n_prompts"][i] += 1
    for name in ("logit_diff", "pd", "pd_direct", "pos", "write"):
        out[name] /= max(att.n_prompts, 1)
    return out
