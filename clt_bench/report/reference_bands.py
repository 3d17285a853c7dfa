"""Make a regression reference: one band per headline metric, set by a stated policy (each
metric's ``policy`` field names it):

- ``exact``: a count (integer in every run) that does not depend on the CLT seed: no tolerance.
- ``deterministic``: a metric that does not depend on the CLT seed (``DETERMINISTIC``): the median
  over all runs, tolerance ``max(det_factor * max|run - median|, det_abs_tol, det_rel_tol *
  |median|)``, the deviation measured across the seed runs *and* the variation runs (another
  thread count, CPU vs GPU), so their float noise is allowed and nothing else.
- ``seed t-interval``: a seed-dependent metric, from ``n >= min_seeds`` seeds: the prediction
  interval for one new draw ``mean ± t(1 - alpha / (2 m), n - 1) * s * sqrt(1 + 1/n)``, ``m`` the
  number of such metrics (Bonferroni): a run with a fresh seed fails the whole gate with
  probability at most ``alpha`` under normal seed variation, however the metrics correlate.
- ``exact (constant over seeds)``: a seed-dependent metric without a floor that did not move.
- ``seed floor``: the interval was narrower than the metric's floor (``SEED_FLOORS``: a metric
  that moves in steps can sit still over a handful of seeds), which sets the band.

Counts that depend on the seed get their band widened outward to whole numbers.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import statistics
from pathlib import Path
from typing import Any

from clt_bench.errors import UserError
from clt_bench.io import read_json, run_metadata, write_json

REFERENCE_SCHEMA = 2

# headline keys that describe the run rather than measure it (not checked)
SKIP_SUFFIXES = ("seconds", "tokens_per_second", "wall_seconds", "train_tokens")

# metrics that do not depend on the CLT seed: whole stages, and the model-only numbers of the
# stages that also use the CLT (the model's PD on the scoring batch, the neuron-only curve, the
# prompt's token count)
DETERMINISTIC = (
    "task.*",
    "baseline.*",
    "activations.*",
    "features.clean_prob_diff",
    "features.n_prompts",
    "compare.model_prob_diff",
    "compare.neuron_units_*",
    "graphs.n_tokens",
    # the PLT sub-run's model-only numbers (its features and graphs stages' clean PD and prompt)
    "plt.clean_prob_diff",
    "plt.n_prompts",
    "plt.n_tokens",
)

# (pattern, absolute floor, relative floor) of the half-width of a seed-dependent metric's band
SEED_FLOORS: tuple[tuple[str, float, float], ...] = (
    ("features.n_*", 2.0, 0.0),  # feature-category counts: a couple may change category
    ("compare.node_precision_*", 0.2, 0.0),  # one node of a ~5-node circuit
    ("compare.node_recall_*", 0.2, 0.0),
    ("compare.clt_all_features_fraction", 0.05, 0.0),
    ("clt.dead_fraction", 0.005, 0.0),
    # the same for the PLT (its features stage's counts, its circuit overlap)
    ("plt.n_*", 2.0, 0.0),
    ("compare.plt_node_precision_*", 0.2, 0.0),
    ("compare.plt_node_recall_*", 0.2, 0.0),
    ("plt.dead_fraction", 0.005, 0.0),
)

# config keys in which a reference's runs may differ: the seeds (a ``--clt-seeds`` run names its
# seeds in ``stability``; each of its seed runs has none), and for a variation run the hardware
SEED_KEYS = ("seed", "clt_seeds", "plt_seeds")
VARIATION_KEYS = (*SEED_KEYS, "threads", "device")


def is_deterministic(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in DETERMINISTIC)


def seed_floor(name: str, mean: float) -> float:
    for pattern, abs_floor, rel_floor in SEED_FLOORS:
        if fnmatch.fnmatchcase(name, pattern):
            return max(abs_floor, rel_floor * abs(mean))
    return 0.0


@functools.lru_cache(maxsize=64)
def t_quantile(q: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def _headline(run: str | Path) -> tuple[dict[str, float], dict[str, Any] | None]:
    path = Path(run) / "metrics.json" if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise UserError(f"{path} does not exist; is {run} a finished run?")
    m = read_json(path)
    if not isinstance(m.get("headline"), dict):
        raise UserError(f"{path} has no headline; is the run finished?")
    nums = {
        k: float(v)
        for k, v in m["headline"].items()
        if isinstance(v, int | float) and not isinstance(v, bool) and not k.endswith(SKIP_SUFFIXES)
    }
    return nums, m.get("config")


def _config_diff(a: Any, b: Any, allowed: tuple[str, ...], prefix: str = "") -> str | None:
    """The first config key where ``a`` and ``b`` differ, ignoring keys named in ``allowed``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in allowed:
                continue
            d = _config_diff(a.get(k), b.get(k), allowed, f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else prefix.rstrip(".")


def _is_count(values: list[float]) -> bool:
    """Whole numbers in every run, not all 0 or 1 (which may as well be fractions)."""
    return all(float(v).is_integer() for v in values) and max(abs(v) for v in values) > 1


def deterministic_band(
    name: str, values: list[float], det_factor: float, det_abs_tol: float, det_rel_tol: float
) -> dict[str, Any]:
    value = statistics.median(values)
    spread = max(abs(v - value) for v in values)
    if _is_count(values) and spread == 0:
        return {"policy": "exact", "value": value, "lo": value, "hi": value, "tol": 0.0}
    tol = max(det_factor * spread, det_abs_tol, det_rel_tol * abs(value))
    if _is_count(values):
        tol = float(math.ceil(tol))
    return {
        "policy": "deterministic",
        "value": value,
        "lo": value - tol,
        "hi": value + tol,
        "tol": tol,
        "measured_spread": spread,
    }


def seed_band(name: str, values: list[float], t: float) -> dict[str, Any]:
    n = len(values)
    mean = statistics.fmean(values)
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))  # sample std
    half = t * s * math.sqrt(1 + 1 / n)
    floor = seed_floor(name, mean)
    if half == 0 and floor == 0:
        policy = "exact (constant over seeds)"
    else:
        policy = "seed t-interval" if half >= floor else "seed floor"
    half = max(half, floor)
    lo, hi = mean - half, mean + half
    if _is_count(values):  # whole numbers: widen outward to the nearest integers
        lo, hi = math.floor(lo), math.ceil(hi)
    return {
        "policy": policy,
        "value": mean,
        "lo": float(lo),
        "hi": float(hi),
        "tol": half,
        "std": s,
        "n": n,
        "t": t,
    }


def build_reference(
    seed_heads: list[dict[str, float]],
    variation_heads: list[dict[str, float]] = (),  # type: ignore[assignment]
    alpha: float = 0.01,
    det_factor: float = 3.0,
    det_abs_tol: float = 1e-6,
    det_rel_tol: float = 1e-6,
) -> dict[str, dict[str, Any]]:
    """The ``metrics`` table of a reference from the headlines of seed and variation runs."""
    heads = list(seed_heads) + list(variation_heads)
    common = sorted(set(seed_heads[0]).intersection(*seed_heads[1:]))
    seed_names = [n for n in common if not is_deterministic(n)]
    n = len(seed_heads)
    m = max(1, len(seed_names))
    t = t_quantile(1 - alpha / (2 * m), n - 1)
    metrics: dict[str, dict[str, Any]] = {}
    for name in common:
        if is_deterministic(name):
            vals = [h[name] for h in heads if name in h]
            band = deterministic_band(name, vals, det_factor, det_abs_tol, det_rel_tol)
        else:
            vals = [h[name] for h in seed_heads]
            band = seed_band(name, vals, t)
            band["variation_values"] = [h[name] for h in variation_heads if name in h]
        band["seed_values"] = [h[name] for h in seed_heads]
        metrics[name] = band
    return metrics


def make_reference(
    run_dirs: list[str | Path],
    out: str | Path,
    variation_dirs: list[str | Path] = (),  # type: ignore[assignment]
    alpha: float = 0.01,
    min_seeds: int = 5,
    det_factor: float = 3.0,
    det_abs_tol: float = 1e-6,
    det_rel_tol: float = 1e-6,
) -> dict[str, Any]:
    """Write a reference from ``run_dirs`` (the same config, different CLT seeds) and
    ``variation_dirs`` (one of those configs under another thread count or device)."""
    if not 0 < alpha < 1:
        raise UserError(f"alpha must lie between 0 and 1 (got {alpha}).")
    if len(run_dirs) < min_seeds:
        raise UserError(
            f"a reference needs at least {min_seeds} runs with different seeds "
            f"(got {len(run_dirs)}): fewer make the seed bands too wide to catch regressions."
        )
    seeds = [_headline(d) for d in run_dirs]
    variations = [_headline(d) for d in variation_dirs]
    base_cfg = seeds[0][1]
    for d, (_, cfg) in zip(list(run_dirs)[1:], seeds[1:], strict=True):
        key = _config_diff(base_cfg, cfg, SEED_KEYS) if base_cfg and cfg else None
        if key:
            raise UserError(f"{d} differs from {run_dirs[0]} in '{key}', not only in seeds.")
    for d, (_, cfg) in zip(variation_dirs, variations, strict=True):
        key = _config_diff(base_cfg, cfg, VARIATION_KEYS) if base_cfg and cfg else None
        if key:
            raise UserError(f"variation run {d} differs from {run_dirs[0]} in '{key}'.")
    metrics = build_reference(
        [h for h, _ in seeds],
        [h for h, _ in variations],
        alpha=alpha,
        det_factor=det_factor,
        det_abs_tol=det_abs_tol,
        det_rel_tol=det_rel_tol,
    )
    n_seed = sum(1 for b in metrics.values() if "seed_values" in b and "std" in b)
    ref = {
        **run_metadata(),
        "reference_schema": REFERENCE_SCHEMA,
        "description": (
            "clt-bench regression reference. Deterministic metrics: median over all runs, "
            f"tolerance max({det_factor} x measured spread, {det_abs_tol}, "
            f"{det_rel_tol} x |value|), counts exact. Seed-dependent metrics ({n_seed}): "
            f"prediction interval for a new seed from {len(run_dirs)} seeds, Bonferroni over "
            f"{n_seed} metrics, whole-gate false-alarm rate <= {alpha} per run under normal "
            "seed variation; per-metric floors where a metric moves in steps."
        ),
        "policy": {
            "alpha": alpha,
            "n_seeds": len(run_dirs),
            "n_seed_metrics": n_seed,
            "det_factor": det_factor,
            "det_abs_tol": det_abs_tol,
            "det_rel_tol": det_rel_tol,
        },
        "runs": [str(d) for d in run_dirs],
        "variation_runs": [str(d) for d in variation_dirs],
        "metrics": metrics,
    }
    write_json(out, ref)
    return ref
