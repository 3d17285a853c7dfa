"""A stage's CSV as a readable table in the report (docs/methods.md, "The page"): cells on one
line (3 significant digits; long text cut, in full on hover), a curated set of columns
(``CURATED``, else the first ``DEFAULT_COLUMNS``) with a button for the rest, sticky first column
and header; ``report.js`` sorts and filters.
"""

from __future__ import annotations

import html
import math
import numbers
from pathlib import Path
from typing import Any

import pandas as pd

MAX_ROWS = 500  # rows in the page; the CSV has them all
DEFAULT_COLUMNS = 10
LONG_TEXT = 48

# file name -> the columns shown before "show all columns" (those missing from a file are skipped)
CURATED: dict[str, list[str]] = {
    "features.csv": [
        "rank",
        "feature",
        "label",
        "runner_up",
        "runner_up_score",
        "influence",
        "gt_corr",
        "zz_range",
        "yy_range",
        "position",
        "pd_contribution",
        "delta_pd_free",
        "n_prompts_active",
    ],
    "families.csv": [
        "name",
        "family",
        "relation",
        "n",
        "prob_diff",
        "model_prob_diff",
        "cutoff_sharpness",
        "corrupted_prob_diff",
        "clt_replacement_pd_ratio",
        "plt_replacement_pd_ratio",
        "faithfulness_components_ratio",
        "median_feature_pd_kept",
        "example_prompt",
        "note",
        "error",
    ],
}


def fmt3(v: Any) -> str:
    """3 significant digits for a float; integers and text as they are; blank for NaN."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.3g}"
    return str(v)


def _number(v: Any) -> Any:
    """A text cell that holds one number (a CSV column mixing numbers and words is read as text)
    as that number; anything else as it is."""
    if isinstance(v, str):
        try:
            return float(v) if v.strip().lower() not in ("nan", "inf", "-inf", "") else v
        except ValueError:
            return v
    return v


def _cell(v: Any, more: bool = False) -> str:
    """One ``<td>``: ``more`` marks a column hidden until "show all columns"; a number keeps its
    full value in ``data-v`` (what sorting compares)."""
    v = _number(v)
    text = fmt3(v)
    classes = ["more"] if more else []
    title = ""
    if len(text) > LONG_TEXT:
        classes.append("long")
        title = f" title='{html.escape(text, quote=True)}'"
        text = text[: LONG_TEXT - 1] + "…"
    number = isinstance(v, numbers.Real) and not isinstance(v, bool) and fmt3(v) != ""
    if not number:
        classes.append("t")  # text reads from the left
    cls = f" class='{' '.join(classes)}'" if classes else ""
    sort = f" data-v='{float(v)!r}'" if number else ""
    return f"<td{cls}{sort}{title}>{html.escape(text)}</td>"


def shown_columns(name: str, columns: list[str]) -> list[str]:
    curated = [c for c in CURATED.get(name, []) if c in columns]
    return curated or columns[:DEFAULT_COLUMNS]


def table_html(
    df: pd.DataFrame,
    table_id: str,
    shown: list[str] | None = None,
    caption: str = "",
    row_ids: list[str] | None = None,
) -> str:
    """``df`` as a sortable, filterable table (see the module doc); ``shown``: the columns
    visible by default (all when ``None``); ``row_ids``: a ``data-id`` per row (what a click on
    the row selects, e.g. a feature)."""
    cols = list(df.columns)
    shown = cols if shown is None else shown
    hidden = {c for c in cols if c not in shown}
    text_cols = {c for c in cols if not pd.api.types.is_numeric_dtype(df[c])}

    def th(c: str) -> str:
        classes = [k for k, on in (("more", c in hidden), ("t", c in text_cols)) if on]
        attr = f" class='{' '.join(classes)}'" if classes else ""
        return f"<th{attr}>{html.escape(str(c))}</th>"

    head = "".join(th(c) for c in cols)
    body = []
    for i, row in enumerate(df.itertuples(index=False)):
        rid = f" data-id='{html.escape(row_ids[i], quote=True)}'" if row_ids else ""
        cells = "".join(_cell(v, c in hidden) for c, v in zip(cols, row, strict=True))
        body.append(f"<tr{rid}>{cells}</tr>")
    toggle = (
        f"<button type='button' class='cols' data-for='{table_id}'>show all {len(cols)} "
        "columns</button>"
        if hidden
        else ""
    )
    return (
        f"<div class='tools'><input type='search' class='filter' data-for='{table_id}' "
        f"placeholder='filter rows' aria-label='filter {html.escape(caption)}'>{toggle}"
        f"<span class='meta'>{html.escape(caption)}</span></div>"
        f"<div class='scroll tbl'><table class='data' id='{table_id}'><thead><tr>{head}</tr>"
        f"</thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def csv_table(path: Path, run_dir: Path, table_id: str) -> str:
    """A stage's CSV as ``table_html`` under a heading that links the file; "" when unreadable."""
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return ""
    rel = path.relative_to(run_dir).as_posix()
    note = f"first {MAX_ROWS} of {len(df)} rows" if len(df) > MAX_ROWS else f"{len(df)} rows"
    ids = None
    if path.name == "features.csv" and "feature" in df.columns:
        ids = [str(v) for v in df["feature"].head(MAX_ROWS)]
    table = table_html(
        df.head(MAX_ROWS),
        table_id,
        shown_columns(path.name, list(df.columns)),
        f"{note} · {len(df.columns)} columns",
        ids,
    )
    return f"<h4><a href='{html.escape(rel)}'>{html.escape(rel)}</a></h4>{table}"
