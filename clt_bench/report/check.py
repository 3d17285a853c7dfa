"""``clt-bench check``: compare a run's headline metrics with a committed reference.

Reference file (JSON, written by ``clt-bench make-reference``)::

    {"reference_schema": 2, "description": "...", "policy": {...},
     "metrics": {"task.prob_diff": {"policy": "deterministic", "value": 0.81,
                                    "lo": 0.809999, "hi": 0.810001}, ...}}

A metric passes when ``lo <= run <= hi`` (bounds inclusive; the band and the policy that set it are
explained in :mod:`clt_bench.report.reference`). Hand-written entries may instead give ``value``
with ``abs_tol`` / ``rel_tol`` (``|run - value| <= abs_tol + rel_tol * |value|``) or one-sided
``min`` / ``max`` bounds. A metric missing from the run fails. Exit 1 when any metric is outside
its band, 0 otherwise; either way the table of every metric is printed.
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
    reference: float | None
    lo: float
    hi: float
    policy: str
    ok: bool

    @property
    def band(self) -> str:
        if self.lo == self.hi:
            return f"= {_fmt(self.lo)}"
        if math.isinf(self.lo):
            return f"<= {_fmt(self.hi)}"
        if math.isinf(self.hi):
            return f">= {_fmt(self.lo)}"
        return f"[{_fmt(self.lo)}, {_fmt(self.hi)}]"


def _fmt(v: float | None) -> str:
    if v is None:
        return "missing"
    return f"{v:.6g}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _number(x: Any, what: str) -> float:
    if isinstance(x, int | float) and not isinstance(x, bool):
        return float(x)
    raise UserError(f"reference metric {what} must be a number (got {x!r}).")


def band_of(name: str, spec: Any) -> tuple[float | None, float, float, str]:
    """(reference value, lo, hi, policy) of one reference entry, whichever form it has."""
    if not isinstance(spec, dict) or not ({"lo", "hi", "value", "min", "max"} & set(spec)):
        raise UserError(f"reference metric '{name}' needs lo/hi, a value, a min or a max.")
    value = _number(spec["value"], f"'{name}' value") if "value" in spec else None
    if "lo" in spec or "hi" in spec:
        lo = _number(spec.get("lo", -math.inf), f"'{name}' lo")
        hi = _number(spec.get("hi", math.inf), f"'{name}' hi")
        return value, lo, hi, str(spec.get("policy", "band"))
    lo, hi, policy = -math.inf, math.inf, []
    if value is not None:
        tol = _number(spec.get("abs_tol", 0.0), f"'{name}' abs_tol") + _number(
            spec.get("rel_tol", 0.0), f"'{name}' rel_tol"
        ) * abs(value)
        lo, hi = value - tol, value + tol
        policy.append("tolerance")
    if "min" in spec:
        lo = max(lo, _number(spec["min"], f"'{name}' min"))
        policy.append("min")
    if "max" in spec:
        hi = min(hi, _number(spec["max"], f"'{name}' max"))
        policy.append("max")
    return value, lo, hi, "+".join(policy)


def check_metrics(run_metrics: dict[str, Any], reference: dict[str, Any]) -> list[CheckRow]:
    if not isinstance(reference.get("metrics"), dict) or not reference["metrics"]:
        raise UserError("the reference file has no 'metrics' table.")
    flat = flatten(run_metrics.get("headline", run_metrics))
    rows = []
    for name, spec in reference["metrics"].items():
        value, lo, hi, policy = band_of(name, spec)
        got = flat.get(name)
        measured = (
            float(got) if isinstance(got, int | float) and not isinstance(got, bool) else None
        )
        ok = measured is not None and math.isfinite(measured) and lo <= measured <= hi
        rows.append(CheckRow(name, measured, value, lo, hi, policy, ok))
    return rows


def format_rows(rows: list[CheckRow]) -> str:
    """The table: metric, value, reference, band, policy, status (failures first)."""
    header = ("metric", "value", "reference", "band", "policy", "")
    body = [
        (r.metric, _fmt(r.measured), _fmt(r.reference), r.band, r.policy, "ok" if r.ok else "FAIL")
        for r in sorted(rows, key=lambda r: r.ok)
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header).rstrip(), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [fmt.format(*row).rstrip() for row in body]
    return "\n".join(lines)


def run_check(run_dir: str | Path, reference_path: str | Path) -> tuple[int, str]:
    """Return (exit code, text): 1 if any metric is outside its band; the table either way."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json" if run_dir.is_dir() else run_dir
    if not metrics_path.is_file():
        raise UserError(f"{metrics_path} does not exist; run `clt-bench run` first.")
    rows = check_metrics(read_json(metrics_path), read_json(reference_path))
    failed = [r for r in rows if not r.ok]
    table = format_rows(rows)
    if failed:
        names = ", ".join(r.metric for r in failed)
        return 1, f"{table}\n\n{len(failed)} of {len(rows)} metrics outside their band: {names}"
    return 0, f"{table}\n\nall {len(rows)} metrics inside their bands of {reference_path}"
