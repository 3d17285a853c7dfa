"""Shape scores of a feature's YY x ZZ logit-attribution heatmap, its YY activation profile, and
the label rule.

Heatmap ``H`` [97, 100]: rows YY = 2..98, columns ZZ = 0..99; ``H[y, z]`` is the feature's
attributed effect on answer logit ZZ=z in the prompt whose start year ends in YY=y (0 where the
feature is inactive, NaN for a YY without a prompt). Scores are computed over the feature's
*active rows* only (rows with a non-zero attribution), so a narrow comparator that fires for
YY 6..14 and promotes ZZ > YY there still scores gt ~ 1; how narrow it is, is a separate score.

Scores (Pearson correlations between the active rows of H and a template over the same cells,
both *row-centred*: each YY row of the heatmap and of the template has its mean over ZZ removed
first, so an effect that shifts every ZZ of a row equally -- which never changes which ZZ wins --
scores 0 whatever its size, however it varies with YY):

- ``gt_corr``: template 1[ZZ > YY] (the task's correct answers);
- ``anti_corr``: template 1[ZZ <= YY] (works against the task). For Pearson this is exactly
  ``-gt_corr``; it is reported for readability;
- ``large_zz_corr``: template ZZ (a YY-independent ramp: promotes large ZZ whatever YY is);
- ``parity_corr``: the larger |correlation| with (-1)^ZZ (even vs odd ZZ) and with (-1)^(ZZ+YY)
  (parity relative to YY's parity);
- ``mult5_corr``: template 1[ZZ mod 5 = 0] (promotes multiples of 5);
- ``yy_independence``: share of the active rows' variance explained by their column means;
- ``zz_lo``, ``zz_hi``, ``zz_peak``: the ZZ range promoted = the 10th..90th percentile of the
  positive part of the column-mean profile, and its arg-max.

Label rule (thresholds in ``FeaturesConfig``), first match wins:

1. no active row -> ``inactive``;
2. active (non-zero heatmap row) on exactly one YY value -> ``single-YY`` (its scores are still
   reported: ``gt_corr`` says whether it is a comparator for that one YY);
3. among {comparator: gt_corr >= gt_corr_thr and gt_corr >= large_zz_corr,
   large-number promoter: large_zz_corr >= large_zz_thr and large_zz_corr > gt_corr,
   parity: parity_corr >= parity_thr, multiple-of-5 promoter: mult5_corr >= mult5_thr} the one
   with the largest score; a comparator active on fewer than ``narrow_yy_fraction`` of the YY
   values is a ``narrow comparator``;
4. ``anti-task`` if gt_corr <= anti_corr_thr (promotes ZZ <= YY) or
   large_zz_corr <= -large_zz_thr (promotes small ZZ whatever YY is);
5. ``other``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from clt_bench.errors import UserError

YY_VALUES = np.arange(2, 99)  # heatmap rows
ZZ_VALUES = np.arange(100)  # heatmap columns
LABELS = (
    "comparator",
    "narrow comparator",
    "large-number promoter",
    "parity",
    "multiple-of-5 promoter",
    "single-YY",
    "anti-task",
    "other",
    "inactive",
)


def label_key(label: str) -> str:
    """The metric key of a label's count (``"single-YY"`` -> ``"n_single_yy"``): the one name the
    features stage writes and the compare stage reads."""
    return "n_" + label.lower().replace(" ", "_").replace("-", "_")


@dataclass(frozen=True)
class LabelRule:
    """Thresholds of the label rule (see module docstring); built from ``FeaturesConfig``."""

    gt_corr: float = 0.5
    anti_corr: float = -0.3
    large_zz_corr: float = 0.5
    parity_corr: float = 0.5
    narrow_yy_fraction: float = 0.25
    mult5_corr: float = 0.5

    @classmethod
    def from_config(cls, cfg: object) -> LabelRule:
        return cls(**{k: float(getattr(cfg, k)) for k in asdict(cls())})


@dataclass(frozen=True)
class ShapeScores:
    gt_corr: float
    anti_corr: float
    large_zz_corr: float
    parity_corr: float
    yy_independence: float
    zz_lo: int
    zz_hi: int
    zz_peak: int
    n_active_rows: int
    mult5_corr: float = 0.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Row-centred correlation of two same-shaped [rows, ZZ] arrays: each row of both loses its
    mean over ZZ, then the Pearson correlation of all cells (0 when either is then zero)."""
    a = np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape)).astype(np.float64)
    b = np.broadcast_to(b, a.shape).astype(np.float64)
    a = (a - a.mean(axis=-1, keepdims=True)).ravel()
    b = (b - b.mean(axis=-1, keepdims=True)).ravel()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-30 else 0.0


def _check(heat: np.ndarray, yy_values: np.ndarray) -> None:
    if heat.ndim != 2 or heat.shape[1] != len(ZZ_VALUES) or heat.shape[0] != len(yy_values):
        raise UserError(
            f"a YY x ZZ heatmap must be [{len(yy_values)}, 100], got {list(heat.shape)}."
        )


def active_rows(heat: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """[rows] bool: rows with a finite, non-zero attribution somewhere."""
    finite = np.isfinite(heat).all(axis=1)
    return finite & (np.abs(np.nan_to_num(heat)).max(axis=1) > tol)


def shape_scores(heat: np.ndarray, yy_values: np.ndarray = YY_VALUES) -> ShapeScores:
    """Scores of one [97, 100] heatmap (rows ``yy_values``); see the module docstring."""
    heat = np.asarray(heat, dtype=np.float64)
    yy_values = np.asarray(yy_values)
    _check(heat, yy_values)
    rows = active_rows(heat)
    if not rows.any():
        return ShapeScores(0.0, 0.0, 0.0, 0.0, 0.0, -1, -1, -1, 0, 0.0)
    h = heat[rows]
    y = yy_values[rows][:, None]
    z = ZZ_VALUES[None, :]
    gt = (z > y).astype(np.float64)
    gt_corr = _corr(h, gt)
    anti_corr = _corr(h, 1.0 - gt)
    large = _corr(h, np.broadcast_to(z, h.shape).astype(np.float64))
    par_z = np.broadcast_to(np.where(z % 2 == 0, 1.0, -1.0), h.shape)
    par_zy = np.where((z + y) % 2 == 0, 1.0, -1.0)
    parity = max(abs(_corr(h, par_z)), abs(_corr(h, par_zy)))
    mult5 = _corr(h, np.broadcast_to((z % 5 == 0).astype(np.float64), h.shape))
    col = h.mean(axis=0)
    total_var = float(((h - h.mean()) ** 2).sum())
    resid_var = float(((h - col[None, :]) ** 2).sum())
    yy_indep = 1.0 - resid_var / total_var if total_var > 1e-30 else 0.0
    pos = np.clip(col, 0.0, None)
    if pos.sum() > 0:
        cdf = np.cumsum(pos) / pos.sum()
        zz_lo = int(np.searchsorted(cdf, 0.1))
        zz_hi = int(min(np.searchsorted(cdf, 0.9), 99))
        zz_peak = int(np.argmax(col))
    else:
        zz_lo = zz_hi = zz_peak = -1
    return ShapeScores(
        gt_corr, anti_corr, large, parity, yy_indep, zz_lo, zz_hi, zz_peak, int(rows.sum()), mult5
    )


@dataclass(frozen=True)
class ActivationProfile:
    """Where a feature fires over the task prompts (one prompt per YY).

    ``yy_fraction``: share of YY values on which it is active (any position); ``yy_lo``/``yy_hi``:
    smallest/largest such YY; ``yy_entropy``: entropy of its activation mass over YY divided by
    log(number of YY) (1 = uniform, 0 = one YY); ``share_yy``/``share_end``/``share_other``: share
    of its activation mass at the YY position, the END position and elsewhere; ``position``: the
    largest of the three.
    """

    yy_fraction: float
    yy_lo: int
    yy_hi: int
    yy_entropy: float
    share_yy: float
    share_end: float
    share_other: float
    position: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def activation_profile(
    acts: np.ndarray, yy: np.ndarray, yy_pos: int, end_pos: int
) -> ActivationProfile:
    """Profile of one feature from its activations ``acts`` [n_prompts, pos] and the prompts' YY."""
    acts = np.abs(np.asarray(acts, dtype=np.float64))
    yy = np.asarray(yy)
    if acts.ndim != 2 or acts.shape[0] != len(yy):
        raise UserError("activation_profile needs acts [n_prompts, pos] and one YY per prompt.")
    per_prompt = acts.sum(axis=1)
    values = np.unique(yy)
    mass = np.array([per_prompt[yy == v].sum() for v in values])
    active = mass > 0
    total = float(acts.sum())
    if not active.any() or total <= 0:
        return ActivationProfile(0.0, -1, -1, 0.0, 0.0, 0.0, 0.0, "none")
    p = mass[active] / mass[active].sum()
    ent = float(-(p * np.log(p)).sum() / math.log(len(values))) if len(values) > 1 else 0.0
    s_yy = float(acts[:, yy_pos].sum()) / total
    s_end = float(acts[:, end_pos].sum()) / total if end_pos != yy_pos else 0.0
    s_other = max(0.0, 1.0 - s_yy - s_end)
    shares = {"YY": s_yy, "END": s_end, "other": s_other}
    return ActivationProfile(
        yy_fraction=float(active.mean()),
        yy_lo=int(values[active].min()),
        yy_hi=int(values[active].max()),
        yy_entropy=ent,
        share_yy=s_yy,
        share_end=s_end,
        share_other=s_other,
        position=max(shares, key=shares.get),
    )


def label_feature(scores: ShapeScores, yy_fraction: float, rule: LabelRule = LabelRule()) -> str:
    """The label rule of the module docstring."""
    if scores.n_active_rows == 0:
        return "inactive"
    if scores.n_active_rows == 1:
        return "single-YY"
    cands: dict[str, float] = {}
    if scores.gt_corr >= rule.gt_corr and scores.gt_corr >= scores.large_zz_corr:
        cands["comparator"] = scores.gt_corr
    if scores.large_zz_corr >= rule.large_zz_corr and scores.large_zz_corr > scores.gt_corr:
        cands["large-number promoter"] = scores.large_zz_corr
    if scores.parity_corr >= rule.parity_corr:
        cands["parity"] = scores.parity_corr
    if scores.mult5_corr >= rule.mult5_corr:
        cands["multiple-of-5 promoter"] = scores.mult5_corr
    if cands:
        best = max(cands, key=cands.get)
        if best == "comparator" and yy_fraction < rule.narrow_yy_fraction:
            return "narrow comparator"
        return best
    if scores.gt_corr <= rule.anti_corr or scores.large_zz_corr <= -rule.large_zz_corr:
        return "anti-task"
    return "other"
