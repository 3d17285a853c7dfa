"""Match transcoder features across seeds by the direction of their decoders.

A feature's decoder direction is its decoder vectors to all the layers it writes, concatenated
and scaled to unit norm (``[F, n_targets * d]`` per source layer). Two transcoders' features of
the same layer are paired one to one by the assignment that maximises the summed cosine
(``scipy.optimize.linear_sum_assignment``), the convention of seed-stability studies of SAEs
(e.g. Paulo & Belrose 2025, "Sparse autoencoders trained on the same data learn different
features"), which also use a match cosine threshold to call a feature "shared".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from clt_bench.clt.model import CrossLayerTranscoder
from clt_bench.errors import UserError


def decoder_directions(clt: CrossLayerTranscoder) -> list[torch.Tensor]:
    """Per source layer, ``[F, n_targets * d]`` unit decoder directions (float64, CPU)."""
    out = []
    for src in range(clt.n_layers):
        w = clt.W_dec[src].detach().to("cpu", torch.float64).reshape(clt.W_dec[src].shape[0], -1)
        out.append(w / w.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return out


@dataclass(frozen=True)
class LayerMatch:
    """For each feature of A (one layer): its partner in B and the cosine of their decoders."""

    partner: np.ndarray  # [F_a] int, -1 when A has more features than B
    cosine: np.ndarray  # [F_a] float, nan where partner == -1


# above this many features per layer the O(F^3) assignment is too slow: fall back to each A
# feature's nearest B feature by cosine (not one to one), as the docstring of
# ``match_transcoders`` states
MAX_ASSIGNMENT = 8192


def match_transcoders(a: CrossLayerTranscoder, b: CrossLayerTranscoder) -> list[LayerMatch]:
    """Match A's features to B's per layer: one to one (maximum total decoder cosine) up to
    ``MAX_ASSIGNMENT`` features per layer, nearest neighbour by cosine above."""
    if (a.n_layers, a.spec.d_model, a.spec.cross_layer) != (
        b.n_layers,
        b.spec.d_model,
        b.spec.cross_layer,
    ):
        raise UserError("transcoders to match must have the same layers, width and kind.")
    out = []
    for da, db in zip(decoder_directions(a), decoder_directions(b), strict=True):
        if max(da.shape[0], db.shape[0]) > MAX_ASSIGNMENT:
            vals, idx = zip(*[(c @ db.T).max(dim=1) for c in torch.split(da, 4096)], strict=True)
            out.append(LayerMatch(partner=torch.cat(idx).numpy(), cosine=torch.cat(vals).numpy()))
            continue
        cos = (da @ db.T).numpy()  # [F_a, F_b]
        rows, cols = linear_sum_assignment(cos, maximize=True)
        partner = np.full(cos.shape[0], -1, dtype=np.int64)
        partner[rows] = cols
        cosine = np.full(cos.shape[0], np.nan)
        cosine[rows] = cos[rows, cols]
        out.append(LayerMatch(partner=partner, cosine=cosine))
    return out
