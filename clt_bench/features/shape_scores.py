"""Shape scores of a feature's YY x ZZ logit-attribution heatmap, its YY activation profile, and
the label rule.

Heatmap ``H`` [97, A]: rows YY = 2..98, columns ZZ = 0..A-1 (A = the task's ``answers.count``:
100 for the greater-than task; every template below has the heatmap's width); ``H[y, z]`` is the
feature's attributed effect on answer logit ZZ=z in the prompt whose start year ends in YY=y (0
where the feature is inactive, NaN for a YY without a prompt). Scores are computed over the
feature's *active rows* only (rows with a non-zero attribution), so a narrow comparator that fires
for YY 6..14 and promotes ZZ > YY there still scores gt ~ 1; how narrow it is, is a separate score.

Scores (Pearson correlations between the active rows of H and a template over the same cells,
both *row-centred*: each YY row of the heatmap and of the template has its mean over ZZ removed
first, so an effect that shifts every ZZ of a row equally -- which never changes which ZZ wins --
scores 0 whatever its size, however it varies with YY):

- ``gt_corr``: template of the task's correct answers, relative to the task's relation
  (``relation_template``): 1[ZZ > YY] for ``gt``, 1[ZZ < YY] for ``lt``, 1[ZZ = answer] for
  ``exact`` (the name is kept from the greater-than task: read it as "task correlation");
- ``anti_corr``: the complement template (works against the task's relation). For Pearson this is
  exactly ``-gt_corr``; it is reported for readability;
- ``large_zz_corr``: template ZZ (a YY-independent ramp: promotes large ZZ whatever YY is);
- ``parity_corr``: the larger |correlation| with (-1)^ZZ (even vs odd ZZ) and with (-1)^(ZZ+YY)
  (parity relative to YY's parity);
- ``mult5_corr``: template 1[ZZ mod 5 = 0] (promotes multiples of 5);
- ``yy_independence``: share of the active rows' variance explained by their column means;
- ``zz_lo``, ``zz_hi``, ``zz_peak``: the ZZ range promoted = the 10th..90th percentile of the
  positive part of the column-mean profile, and its arg-max;
- ``gt_partial``, ``large_zz_partial``, ``parity_partial``, ``mult5_partial``: *partial*
  (residualised) correlations: the heatmap and the class's template both lose their least-squares
  fit on the other classes' templates (all row-centred) before correlating. The comparator and
  large-ZZ templates correlate at ~0.72, so a pure pattern of either kind clears both raw
  thresholds; their partial correlations separate them (a pure comparator: gt_partial ~0.69,
  large_zz_partial 0; a pure ramp the reverse).

Label rule (thresholds in ``FeaturesConfig``), first match wins:

1. no active row -> ``inactive``;
2. active (non-zero heatmap row) on exactly one YY value -> ``single-YY`` (its scores are still
   reported: ``gt_corr`` says whether it is a comparator for that one YY);
3. the classes {comparator, large-number promoter, parity, multiple-of-5 promoter} whose raw
   correlation clears its threshold (``gt_corr``, ``large_zz_corr``, ``parity_corr``,
   ``mult5_corr``) *and* whose partial correlation clears ``partial_corr`` (a component beyond
   what the other templates explain) are candidates; the one with the largest raw correlation
   wins. A winning comparator or large-number promoter is
   *gated* when it fires on only part of the YY values (the activation profile, over all prompts:
   conditioning the scores on active rows hides the gating): active on fewer than
   ``narrow_yy_fraction`` of them -> ``narrow comparator``, on fewer than ``gated_yy_fraction``
   -> ``range comparator`` (fires for YY in yy_lo..yy_hi, promotes ZZ in zz_lo..zz_hi);
4. ``anti-task`` if gt_corr <= anti_corr_thr (promotes the answers the task's relation calls
   wrong: ZZ <= YY for ``gt``, ZZ >= YY for ``lt``) or, for ``gt``, large_zz_corr <= -large_zz_thr
   (promotes small ZZ whatever YY is; for ``lt``, large_zz_corr >= large_zz_thr);
5. ``other``.

``label_decision`` also returns the ``secondary`` label (the next candidate of step 3, e.g. a
comparator with a multiple-of-5 bump that clears that class's thresholds too), the ``runner_up``
class (the next class by raw correlation, candidate or not) with its raw and partial correlation,
and the ``margin`` (winner's raw correlation minus the runner-up's): how close the call was. A
pure comparator's runner-up is large-number promoter at raw 0.72 but partial 0: not a contender.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from clt_bench.errors import UserError

YY_VALUES = np.arange(2, 99)  # heatmap rows (the greater-than task's; ``heatmap_rows`` in general)
ZZ_VALUES = np.arange(100)  # heatmap columns of 100 answers (a heatmap's own width in general)
LABELS = (
    "comparator",
    "narrow comparator",
    "range comparator",
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
    partial_corr: float = 0.2
    gated_yy_fraction: float = 0.9

    @classmethod
    def from_config(cls, cfg: object) -> LabelRule:
        return cls(**{k: float(getattr(cfg, k, v)) for k, v in asdict(cls()).items()})


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
    gt_partial: float = 0.0
    large_zz_partial: float = 0.0
    parity_partial: float = 0.0
    mult5_partial: float = 0.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _centred(a: np.ndarray) -> np.ndarray:
    """Row-centred and flattened (each row loses its mean over ZZ)."""
    a = np.asarray(a, dtype=np.float64)
    return (a - a.mean(axis=-1, keepdims=True)).ravel()


def _corr(hc: np.ndarray, hh: float, b: np.ndarray, bb: float) -> float:
    """Pearson correlation of a row-centred heatmap ``hc`` (squared norm ``hh``) and a row-centred
    template ``b`` (``bb``); 0 when either is zero."""
    den = math.sqrt(hh * bb)
    return float((hc * b).sum() / den) if den > 1e-30 else 0.0


def relation_template(
    y: np.ndarray, relation: str = "gt", answers: np.ndarray | None = None, n_answers: int = 100
) -> np.ndarray:
    """[rows, A] 1.0 on the answers the task's relation calls correct for rows of YY ``y``
    [rows, 1]: ZZ > YY (gt), ZZ < YY (lt), ZZ = the row's answer (exact; ``answers`` [rows]);
    A = ``n_answers``."""
    z = np.arange(n_answers)[None, :]
    if relation == "gt":
        return np.broadcast_to(z > y, (len(y), n_answers)).astype(np.float64)
    if relation == "lt":
        return np.broadcast_to(z < y, (len(y), n_answers)).astype(np.float64)
    if relation == "exact":
        if answers is None:
            raise UserError("the exact relation's label template needs each row's answer.")
        return (z == np.asarray(answers).reshape(-1, 1)).astype(np.float64)
    raise UserError(f"unknown relation '{relation}' (use gt, lt or exact).")


TEMPLATE_NAMES = ("gt", "large", "par_z", "par_zy", "mult5")  # the partials' templates, in order


@dataclass(frozen=True)
class Templates:
    """The templates over one set of active rows, row-centred and flattened, with their squared
    norms (``corr``); for the partial correlations the templates ``T`` [5, N] (``TEMPLATE_NAMES``)
    and their Gram matrix ``gram`` [5, 5]: the same for every feature active on those rows, so
    built once for them (``templates``)."""

    corr: dict[str, tuple[np.ndarray, float]]
    T: np.ndarray
    gram: np.ndarray
    # per partial (``PARTIALS``): the pseudo-inverse of its controls' Gram matrix and its
    # template's squared residual on them
    solve: dict[str, tuple[np.ndarray, float]]


_TEMPLATES: dict[tuple[bytes, int, str, bytes], Templates] = {}


def templates(
    y: np.ndarray, width: int, relation: str = "gt", answers: np.ndarray | None = None
) -> Templates:
    """The templates of rows with YY values ``y`` [rows, 1] and ``width`` answers (``answers``
    [rows]: an exact task's answer per row), from a small cache."""
    ans = b"" if answers is None else np.asarray(answers, dtype=np.int64).tobytes()
    key = (np.asarray(y, dtype=np.int64).tobytes(), width, relation, ans)
    if key not in _TEMPLATES:
        if len(_TEMPLATES) >= 256:
            _TEMPLATES.clear()
        _TEMPLATES[key] = _build_templates(y, width, relation, answers)
    return _TEMPLATES[key]


def _build_templates(
    y: np.ndarray, width: int, relation: str, answers: np.ndarray | None
) -> Templates:
    z = np.arange(width)[None, :]
    shape = (len(y), width)
    task = relation_template(y, relation, answers, width)
    raw = {
        "gt": task,
        "anti": 1.0 - task,
        "large": np.broadcast_to(z, shape),
        "par_z": np.broadcast_to(np.where(z % 2 == 0, 1.0, -1.0), shape),
        "par_zy": np.where((z + y) % 2 == 0, 1.0, -1.0),
        "mult5": np.broadcast_to((z % 5 == 0).astype(np.float64), shape),
    }
    centred = {k: _centred(v) for k, v in raw.items()}
    T = np.stack([centred[k] for k in TEMPLATE_NAMES])
    gram = T @ T.T
    solve = {}
    for name, (j, ctrl) in PARTIALS.items():
        s = list(ctrl)
        inv = np.linalg.pinv(gram[np.ix_(s, s)])
        solve[name] = (inv, max(float(gram[j, j] - gram[j, s] @ inv @ gram[s, j]), 0.0))
    corr = {k: (v, float((v * v).sum())) for k, v in centred.items()}
    return Templates(corr, T, gram, solve)


# each partial correlation: (its template, the templates it controls for), as indices into
# ``TEMPLATE_NAMES``; parity's two templates (ZZ's and ZZ + YY's) do not control for each other
PARTIALS = {
    "gt": (0, (1, 2, 3, 4)),
    "large": (1, (0, 2, 3, 4)),
    "par_z": (2, (0, 1, 4)),
    "par_zy": (3, (0, 1, 4)),
    "mult5": (4, (0, 1, 2, 3)),
}


def _residual_partial(hc: np.ndarray, t: np.ndarray, controls: list[np.ndarray]) -> float:
    """The definition: the correlation of ``hc`` and ``t`` after both lose their least-squares
    fit on ``controls``; 0 when either residual is ~0."""
    c = np.stack(controls, axis=1)
    h = hc - c @ np.linalg.lstsq(c, hc, rcond=None)[0]
    t = t - c @ np.linalg.lstsq(c, t, rcond=None)[0]
    den = math.sqrt(float(h @ h) * float(t @ t))
    return float(h @ t / den) if den > 1e-30 * max(1.0, float(len(h))) else 0.0


def _gram_partial(hc: np.ndarray, tp: Templates, name: str, th: np.ndarray, hh: float) -> float:
    """The same from inner products (``th`` = each template . h, ``hh`` = h . h): the residuals'
    ``r_a . r_b = a . b - a . C (C^T C)^+ C^T . b``, no least-squares solve per heatmap. Equal to
    the definition to ~1e-8 (a test checks 1e-9 on random heatmaps), not to the bit."""
    j, ctrl = PARTIALS[name]
    s = list(ctrl)
    inv, r_tt = tp.solve[name]
    ch = inv @ th[s]
    r_ht = float(th[j] - tp.gram[j, s] @ ch)
    r_hh = max(hh - float(th[s] @ ch), 0.0)
    den = math.sqrt(r_hh * r_tt)
    return r_ht / den if den > 1e-30 * max(1.0, float(len(hc))) else 0.0


def partial_scores(hc: np.ndarray, tp: Templates, fast: bool = False) -> dict[str, float]:
    """Partial correlations of the row-centred heatmap ``hc`` [N] with each class's template,
    controlling for the other classes' templates (module docstring). ``fast``: from inner
    products (``_gram_partial``; labelling every active feature), else by the definition (the
    numbers a run reports and the regression reference checks to the bit)."""
    if fast:
        th, hh = tp.T @ hc, float(hc @ hc)
        out = {name: _gram_partial(hc, tp, name, th, hh) for name in PARTIALS}
    else:
        out = {
            name: _residual_partial(hc, tp.T[j], [tp.T[k] for k in ctrl])
            for name, (j, ctrl) in PARTIALS.items()
        }
    parity = max(abs(out.pop("par_z")), abs(out.pop("par_zy")))
    return {"gt": out["gt"], "large": out["large"], "parity": parity, "mult5": out["mult5"]}


def active_rows(heat: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """[rows] bool: rows with a finite, non-zero attribution somewhere."""
    finite = np.isfinite(heat).all(axis=1)
    return finite & (np.abs(np.nan_to_num(heat)).max(axis=1) > tol)


def shape_scores(
    heat: np.ndarray,
    yy_values: np.ndarray = YY_VALUES,
    relation: str = "gt",
    answers: np.ndarray | None = None,
    fast: bool = False,
) -> ShapeScores:
    """Scores of one [97, A] heatmap (rows ``yy_values``, columns the task's A answers;
    ``answers`` [rows]: each row's exact answer for the ``exact`` relation); the task template
    follows ``relation`` (module docstring); ``fast``: the partial correlations from inner
    products (``partial_scores``)."""
    heat = np.asarray(heat, dtype=np.float64)
    yy_values = np.asarray(yy_values)
    if heat.ndim != 2 or heat.shape[1] < 2 or heat.shape[0] != len(yy_values):
        raise UserError(
            f"a YY x ZZ heatmap must be [{len(yy_values)}, answers] (at least 2 answers), got "
            f"{list(heat.shape)}."
        )
    rows = active_rows(heat)
    if not rows.any():
        return ShapeScores(0.0, 0.0, 0.0, 0.0, 0.0, -1, -1, -1, 0, 0.0)
    h = heat[rows]
    y = yy_values[rows][:, None]
    width = heat.shape[1]
    ans = None if answers is None else np.asarray(answers)[rows]
    tp = templates(y, width, relation, ans)
    hc = _centred(h)
    hh = float((hc * hc).sum())
    gt_corr, anti_corr, large, par_z, par_zy, mult5 = (
        _corr(hc, hh, *tp.corr[k]) for k in ("gt", "anti", "large", "par_z", "par_zy", "mult5")
    )
    parity = max(abs(par_z), abs(par_zy))
    col = h.mean(axis=0)
    total_var = float(((h - h.mean()) ** 2).sum())
    resid_var = float(((h - col[None, :]) ** 2).sum())
    yy_indep = 1.0 - resid_var / total_var if total_var > 1e-30 else 0.0
    pos = np.clip(col, 0.0, None)
    if pos.sum() > 0:
        cdf = np.cumsum(pos) / pos.sum()
        zz_lo = int(np.searchsorted(cdf, 0.1))
        zz_hi = int(min(np.searchsorted(cdf, 0.9), width - 1))
        zz_peak = int(np.argmax(col))
    else:
        zz_lo = zz_hi = zz_peak = -1
    part = partial_scores(hc, tp, fast)
    return ShapeScores(
        gt_corr,
        anti_corr,
        large,
        parity,
        yy_indep,
        zz_lo,
        zz_hi,
        zz_peak,
        int(rows.sum()),
        mult5,
        part["gt"],
        part["large"],
        part["parity"],
        part["mult5"],
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


@dataclass(frozen=True)
class LabelDecision:
    """A feature's label, its secondary label ("" if none), the runner-up class with its raw and
    partial correlation, and the margin of the call (winner's raw correlation minus the
    runner-up's)."""

    label: str
    secondary: str = ""
    runner_up: str = ""
    runner_up_score: float = float("nan")
    runner_up_partial: float = float("nan")
    margin: float = float("nan")


CLASSES = ("comparator", "large-number promoter", "parity", "multiple-of-5 promoter")


def _gated(label: str, yy_fraction: float, rule: LabelRule) -> str:
    if label not in ("comparator", "large-number promoter"):
        return label
    if yy_fraction < rule.narrow_yy_fraction:
        return "narrow comparator"
    if yy_fraction < rule.gated_yy_fraction:
        return "range comparator"
    return label


def label_decision(
    scores: ShapeScores, yy_fraction: float, rule: LabelRule = LabelRule(), relation: str = "gt"
) -> LabelDecision:
    """The label rule of the module docstring, with the secondary label and the runner-up;
    ``relation``: the task's (the scores' task template already follows it; here it orients the
    large-ZZ ramp of the anti-task rule)."""
    if scores.n_active_rows == 0:
        return LabelDecision("inactive")
    if scores.n_active_rows == 1:
        return LabelDecision("single-YY")
    c, lg, par, m5 = CLASSES
    raw = {c: scores.gt_corr, lg: scores.large_zz_corr, par: scores.parity_corr}
    raw[m5] = scores.mult5_corr
    part = {c: scores.gt_partial, lg: scores.large_zz_partial, par: scores.parity_partial}
    part[m5] = scores.mult5_partial
    thr = {c: rule.gt_corr, lg: rule.large_zz_corr, par: rule.parity_corr, m5: rule.mult5_corr}
    ranked = sorted(CLASSES, key=lambda k: -raw[k])
    cands = [k for k in ranked if raw[k] >= thr[k] and part[k] >= rule.partial_corr]
    if cands:
        best = cands[0]
        label = _gated(best, yy_fraction, rule)
        # the next candidate that names something else (a gated comparator and a gated large-ZZ
        # ramp are both "range comparator": one label)
        second = next((c for c in cands[1:] if _gated(c, yy_fraction, rule) != label), "")
    else:
        best, second = ranked[0], ""
        label = "other"
        ramp = {"gt": -scores.large_zz_corr, "lt": scores.large_zz_corr}.get(relation, 0.0)
        if scores.gt_corr <= rule.anti_corr or ramp >= rule.large_zz_corr:
            label = "anti-task"
    runner = next(k for k in ranked if k != best)
    return LabelDecision(
        label,
        _gated(second, yy_fraction, rule) if second else "",
        runner,
        float(raw[runner]),
        float(part[runner]),
        float(raw[best] - raw[runner]),
    )


# a label class is testable on a model when the model's own output shows that structure: the
# |partial correlation| of its mean log p(ZZ | YY) heatmap with the class's template
TESTABLE_PARTIAL = 0.1


def labels_testable(model: ShapeScores, tol: float = TESTABLE_PARTIAL) -> dict[str, bool]:
    """Whether "multiple-of-5 promoter" and "parity" can be found on a model whose own output
    heatmap (``model``: its shape scores) has these partial correlations: a model without a
    round-number bias has no such feature to find, so 0 of them is no finding."""
    return {
        "multiple-of-5 promoter": abs(model.mult5_partial) >= tol,
        "parity": abs(model.parity_partial) >= tol,
    }


def label_feature(
    scores: ShapeScores, yy_fraction: float, rule: LabelRule = LabelRule(), relation: str = "gt"
) -> str:
    """The label rule of the module docstring."""
    return label_decision(scores, yy_fraction, rule, relation).label
