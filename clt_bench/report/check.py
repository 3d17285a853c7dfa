"""``clt-bench check``: compare a run's headline metrics with a committed reference.

Reference file (JSON)::

    {"schema_version": 1, "description": "...", "made_with": "...",
     "metrics": {"task.prob_diff": {"value": 0.91, "abs_tol": 0.02}, ...}}

A metric passes when ``|run - value| <= abs_tol + rel_tol * |value|`` (missing tolerances are 0).
``min`` / ``max`` bounds may replace ``value`` for one-sided checks. A metric missing from the run
fails. Exit 1 with a table of the failures; 0 when every metric is inside its tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clt_bench.errors import UserError
from clt_bench.io import read_json


@dataclass(frozen=True)
class CheckRow:
    metric: str
    measured: float | None
    expected: str
    ok: bool


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _expected_text(spec: dict[str, Any]) -> str:
    parts = []
    if "value" in spec:
        tol = spec.get("abs_tol", 0.0) + spec.get("rel_tol", 0.0) * abs(spec["value"])
        parts.append(f"{spec['value']:.4g} ± {tol:.3g}")
    if "min" in spec:
        parts.append(f">= {spec['min']:.4g}")
    if "max" in spec:
        parts.append(f"<= {spec['max']:.4g}")
    return ", ".join(parts)


def check_metrics(run_metrics: dict[str, Any], reference: dict[str, Any]) -> list[CheckRow]:
    if not isinstance(reference.get("metrics"), dict) or not reference["metrics"]:
        raise UserError("the reference file has no 'metrics' table.")
    flat = flatten(run_metrics.get("headline", run_metrics))
    rows = []
    for name, spec in reference["metrics"].items():
        if not isinstance(spec, dict) or not ({"value", "min", "max"} & set(spec)):
            raise UserError(f"reference metric '{name}' needs a value, min or max.")
        got = flat.get(name)
        measured = (
            float(got) if isinstance(got, int | float) and not isinstance(got, bool) else None
        )
        ok = measured is not None and math.isfinite(measured)
        if ok and "value" in spec:
            tol = spec.get("abs_tol", 0.0) + spec.get("rel_tol", 0.0) * abs(spec["value"])
            ok = abs(measured - spec["value"]) <= tol
        if ok and "min" in spec:
            ok = measured >= spec["min"]
        if ok and "max" in spec:
            ok = measured <= spec["max"]
        rows.append(CheckRow(name, measured, _expected_text(spec), ok))
    return rows


def format_rows(rows: list[CheckRow]) -> str:
    w = max([len(r.metric) for r in rows] + [6])
    lines = [f"{'metric':<{w}}  {'measured':>10}  expected", "-" * (w + 34)]
    for r in rows:
        m = "missing" if r.measured is None else f"{r.measured:.4g}"
        lines.append(f"{r.metric:<{w}}  {m:>10}  {r.expected}")
    return "\n".join(lines)


def run_check(run_dir: str | Path, reference_path: str | Path) -> tuple[int, str]:
    """Return (exit code, text): 1 and the failures table if any metric is out of tolerance."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json" if run_dir.is_dir() else run_dir
    if not metrics_path.is_file():
        raise UserError(f"{metrics_path} does not exist; run `clt-bench run` first.")
    rows = check_metrics(read_json(metrics_path), read_json(reference_path))
    failed = [r for r in rows if not r.ok]
    if failed:
        return 1, f"{len(failed)} of {len(rows)} metrics outside tolerance:\n{format_rows(failed)}"
    return 0, f"all {len(rows)} metrics inside tolerance of {reference_path}"
