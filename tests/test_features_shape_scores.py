"""Shape scores, activation profiles and the label rule on hand-built heatmaps."""

from __future__ import annotations

import numpy as np
import pytest

from clt_bench.config import FeaturesConfig
from clt_bench.errors import UserError
from clt_bench.features.shape_scores import (
    YY_VALUES,
    ZZ_VALUES,
    LabelRule,
    activation_profile,
    label_feature,
    shape_scores,
)

Y = YY_VALUES[:, None]
Z = ZZ_VALUES[None, :]


def full(pattern: np.ndarray) -> np.ndarray:
    return np.broadcast_to(pattern, (len(YY_VALUES), 100)).astype(float).copy()


def test_greater_than_mask_is_a_comparator():
    s = shape_scores((Z > Y).astype(float))
    assert s.gt_corr == pytest.approx(1.0)
    assert s.anti_corr == pytest.approx(-1.0)
    assert s.n_active_rows == 97
    assert label_feature(s, 1.0) == "comparator"


def test_signed_mask_and_scale_do_not_matter():
    s = shape_scores(3.0 * np.where(Z > Y, 1.0, -0.5))
    assert s.gt_corr == pytest.approx(1.0)


def test_narrow_comparator():
    h = np.zeros((97, 100))
    rows = (YY_VALUES >= 6) & (YY_VALUES <= 14)
    h[rows] = np.where(Z > Y, 1.0, -1.0)[rows]
    s = shape_scores(h)
    assert s.gt_corr == pytest.approx(1.0)
    assert s.n_active_rows == 9
    assert label_feature(s, 9 / 97) == "narrow comparator"
    assert label_feature(s, 1.0) == "comparator"


def test_parity():
    s = shape_scores(full(np.where(Z % 2 == 0, 1.0, -1.0)))
    assert s.parity_corr == pytest.approx(1.0)
    assert abs(s.gt_corr) < 0.1
    assert label_feature(s, 1.0) == "parity"
    relative = np.where((Z + Y) % 2 == 0, 1.0, -1.0)  # even ZZ for even YY, odd for odd
    assert shape_scores(relative).parity_corr == pytest.approx(1.0)
    assert label_feature(shape_scores(relative), 1.0) == "parity"


def test_large_number_promoter():
    s = shape_scores(full((Z >= 60).astype(float)))
    assert s.large_zz_corr > s.gt_corr
    assert s.yy_independence == pytest.approx(1.0)
    assert s.zz_lo >= 60
    assert label_feature(s, 1.0) == "large-number promoter"


def test_anti_task():
    assert label_feature(shape_scores((Z <= Y).astype(float)), 1.0) == "anti-task"
    assert label_feature(shape_scores(full((Z < 20).astype(float))), 1.0) == "anti-task"


def test_other_and_inactive():
    rng = np.random.default_rng(0)
    s = shape_scores(rng.normal(size=(97, 100)))
    assert label_feature(s, 1.0) == "other"
    s0 = shape_scores(np.zeros((97, 100)))
    assert s0.n_active_rows == 0 and label_feature(s0, 0.0) == "inactive"


def test_nan_rows_are_ignored_and_bad_shapes_rejected():
    h = (Z > Y).astype(float)
    h[::2] = np.nan
    assert shape_scores(h).gt_corr == pytest.approx(1.0)
    with pytest.raises(UserError):
        shape_scores(np.zeros((10, 100)))


def test_thresholds_come_from_the_config():
    rule = LabelRule.from_config(FeaturesConfig(gt_corr=0.99, large_zz_corr=0.99))
    s = shape_scores(0.8 * (Z > Y) + 0.2 * np.random.default_rng(1).normal(size=(97, 100)))
    assert label_feature(s, 1.0) == "comparator"
    assert label_feature(s, 1.0, rule) != "comparator"


def test_activation_profile():
    yy = np.arange(2, 12)
    acts = np.zeros((10, 13))
    acts[2:5, 8] = 1.0  # YY 4..6 at the YY position
    acts[3, 12] = 1.0  # and once at END
    p = activation_profile(acts, yy, yy_pos=8, end_pos=12)
    assert p.yy_fraction == pytest.approx(0.3)
    assert (p.yy_lo, p.yy_hi) == (4, 6)
    assert p.position == "YY"
    assert p.share_yy == pytest.approx(0.75) and p.share_end == pytest.approx(0.25)
    assert 0 < p.yy_entropy < 1
    flat = activation_profile(np.ones((10, 13)), yy, 8, 12)
    assert flat.yy_entropy == pytest.approx(1.0) and flat.position == "other"


def test_row_constant_heatmap_is_not_a_comparator():
    # every ZZ of a row shifted equally, more for small YY: never changes which ZZ wins
    h = full(np.ones((1, 100))) * (100.0 - Y)
    s = shape_scores(h)
    assert abs(s.gt_corr) < 0.05
    assert label_feature(s, 1.0) != "comparator"
    # without row-centring the same heatmap correlates with 1[ZZ > YY]
    raw = np.corrcoef(h.ravel(), (Z > Y).astype(float).ravel())[0, 1]
    assert raw > 0.2


def test_step_at_yy_plus_one_plus_row_constant_is_a_comparator():
    h = (Z >= Y + 1).astype(float) + 5.0 * (100.0 - Y) / 100.0  # step plus a row-wise shift
    s = shape_scores(h)
    assert s.gt_corr > 0.9
    assert label_feature(s, 1.0) == "comparator"


def test_multiple_of_5_promoter():
    s = shape_scores(full((Z % 5 == 0).astype(float)) + 0.3 * Y)
    assert s.mult5_corr == pytest.approx(1.0)
    assert abs(s.gt_corr) < 0.1
    assert label_feature(s, 1.0) == "multiple-of-5 promoter"
    # a threshold above the score turns the label off
    assert label_feature(s, 1.0, LabelRule(mult5_corr=1.1)) != "multiple-of-5 promoter"
    # a comparator does not look like a multiple-of-5 promoter
    assert shape_scores((Z > Y).astype(float)).mult5_corr < 0.2


def test_single_yy():
    h = np.zeros((97, 100))
    row = int(np.nonzero(YY_VALUES == 11)[0][0])
    h[row] = np.where(ZZ_VALUES > 11, 1.0, -1.0)
    s = shape_scores(h)
    assert s.n_active_rows == 1 and s.gt_corr == pytest.approx(1.0)
    assert label_feature(s, 1 / 97) == "single-YY"
    h[row + 1] = np.where(ZZ_VALUES > 12, 1.0, -1.0)  # two YY: a narrow comparator
    assert label_feature(shape_scores(h), 2 / 97) == "narrow comparator"


def _residual_partial(h: np.ndarray, t: np.ndarray, controls: list[np.ndarray]) -> float:
    """The definition: correlate h and t after each loses its least-squares fit on controls."""
    c = np.stack(controls, axis=1)
    rh = h - c @ np.linalg.lstsq(c, h, rcond=None)[0]
    rt = t - c @ np.linalg.lstsq(c, t, rcond=None)[0]
    return float(rh @ rt / np.sqrt((rh @ rh) * (rt @ rt)))


@pytest.mark.parametrize("seed", range(6))
def test_partial_scores_equal_the_residual_definition(seed):
    """The fast partials come from inner products (one Gram matrix per set of active rows); they
    equal correlating the explicit least-squares residuals (the default path, to the bit), on
    random heatmaps and active rows."""
    from clt_bench.features.shape_scores import TEMPLATE_NAMES, _centred, partial_scores, templates

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(YY_VALUES), size=int(rng.integers(3, 97)), replace=False))
    h = rng.standard_normal((len(rows), 100)) + (YY_VALUES[rows, None] < Z) * rng.normal()
    y = YY_VALUES[rows][:, None]
    tp = templates(y, 100)
    hc = _centred(h)
    t = dict(zip(TEMPLATE_NAMES, tp.T, strict=True))

    def ref(name: str, *skip: str) -> float:
        return _residual_partial(hc, t[name], [v for k, v in t.items() if k not in (name, *skip)])

    assert partial_scores(hc, tp)["gt"] == ref("gt")  # the default: the definition itself
    got = partial_scores(hc, tp, fast=True)
    assert got["gt"] == pytest.approx(ref("gt"), abs=1e-9)
    assert got["large"] == pytest.approx(ref("large"), abs=1e-9)
    assert got["mult5"] == pytest.approx(ref("mult5"), abs=1e-9)
    parity = max(abs(ref("par_z", "par_zy")), abs(ref("par_zy", "par_z")))
    assert got["parity"] == pytest.approx(parity, abs=1e-9)
