"""``clt-bench check``: compare a run's headline metrics with a committed reference.

The reference (written by ``clt-bench make-reference``, :mod:`clt_bench.report.reference_bands`)
holds ``metrics``: per headline metric a band ``lo <= run <= hi`` (inclusive) and the policy that
set it; hand-written entries may instead give ``value`` with ``abs_tol`` / ``rel_tol`` or one-sided
``min`` / ``max`` bounds. A metric missing from the run fails. Exit 1 when any metric is outside
its band, 0 otherwise; either way the table of every metric is printed.

First the gate makes sure the numbers are the run's own (``stale_stage``): each stage's
``stage.json`` must still carry the hash ``metrics.json`` recorded for it, else the check ends
with one sentence naming the stage (exit 2) instead of passing on a previous run's numbers.
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
    if not isinstance(reference, dict) or not isinstance(reference.get("metrics"), dict):
        raise UserError("the reference file has no 'metrics' table.")
    if not reference["metrics"]:
        raise UserError("the reference file's 'metrics' table is empty.")
    if not isinstance(run_metrics, dict):
        raise UserError("the run's metrics.json is not a table of metrics.")
    headline = run_metrics.get("headline", run_metrics)
    if not isinstance(headline, dict):
        raise UserError("the run's metrics.json has no 'headline' table.")
    flat = flatten(headline)
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


def stale_stage(run_dir: Path, metrics: Any) -> None:
    """Raise ``UserError`` naming the first stage of ``run_dir`` whose finished record is not the
    one ``metrics.json`` was made from (recomputed since, unfinished, missing), or when a run is
    writing the folder now."""
    from clt_bench.runlock import holder, is_locked

    if is_locked(run_dir):
        raise UserError(
            f"{run_dir} is being written by a clt-bench run ({holder(run_dir) or 'another process'}"
            "); check it once that run has finished."
        )
    records = metrics.get("stages") if isinstance(metrics, dict) else None
    if not isinstance(records, dict) or not records:
        raise UserError(
            f"{run_dir / 'metrics.json'} does not record the stages it was made from (written by "
            "an older clt-bench or by hand), so its numbers may not be the run's; rerun "
            f"`clt-bench run --out {run_dir}`, or pass --numbers-only to compare them as they are."
        )
    rerun = f"rerun `clt-bench run --out {run_dir}` to bring the report up to date"
    for stage, want in records.items():
        folder = run_dir / str(stage)
        marker = folder / "stage.json"
        if not marker.is_file():
            how = (
                "is unfinished (interrupted, or started after"
                if folder.is_dir()
                else ("is missing (deleted after")
            )
            raise UserError(
                f"stage '{stage}' of {run_dir} {how} metrics.json was written), so metrics.json "
                f"does not describe this run; {rerun}."
            )
        got = read_json(marker)
        if not isinstance(got, dict) or got.get("config_hash") != want:
            raise UserError(
                f"stage '{stage}' of {run_dir} was recomputed under another config or code after "
                f"metrics.json was written, so metrics.json holds stale numbers; {rerun}."
            )


def run_check(
    run_dir: str | Path, reference_path: str | Path, verify_stages: bool = True
) -> tuple[int, str]:
    """Return (exit code, text): 1 if any metric is outside its band; the table either way.

    ``verify_stages``: first make sure ``metrics.json`` belongs to the run's finished stages
    (``stale_stage``); off compares the numbers of a ``metrics.json`` as they are.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json" if run_dir.is_dir() else run_dir
    if not metrics_path.is_file():
        raise UserError(f"{metrics_path} does not exist; run `clt-bench run` first.")
    reference = read_json(reference_path)
    metrics = read_json(metrics_path)
    if verify_stages:
        stale_stage(metrics_path.parent, metrics)
    rows = check_metrics(metrics, reference)
    failed = [r for r in rows if not r.ok]
    table = format_rows(rows)
    if failed:
        names = ", ".join(r.metric for r in failed)
        return 1, f"{table}\n\n{len(failed)} of {len(rows)} metrics outside their band: {names}"
    return 0, f"{table}\n\nall {len(rows)} metrics inside their bands of {reference_path}"
