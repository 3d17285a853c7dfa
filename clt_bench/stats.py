"""Intervals over prompts: the percentile bootstrap every stage and the report share."""

from __future__ import annotations

import math

import numpy as np


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` [n] (resampling prompts)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def mean_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 95 % bootstrap interval) of the finite entries of ``values``; NaN bounds for fewer
    than two values or ``n_boot == 0``, all NaN for none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    if len(v) < 2 or n_boot == 0:
        return float(v.mean()), math.nan, math.nan
    lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return float(v.mean()), lo, hi
