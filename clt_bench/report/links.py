"""Each headline metric's definition in ``docs/methods.md``, for the report and ``read_metrics``.

``docs/methods.md`` marks each metric's paragraph with an HTML anchor whose id is the metric key
with the dot replaced by a dash (``<a id="task-prob_diff"></a>`` for ``task.prob_diff``); a metric
without its own paragraph links to its stage's section (``<a id="task"></a>``).
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from pathlib import Path

from clt_bench.paths import data_root

ANCHOR = re.compile(r'<a id="([^"]+)"></a>')


def methods_path() -> Path:
    """``docs/methods.md`` in a checkout, ``clt_bench/_data/docs/methods.md`` in a wheel."""
    return data_root("docs") / "methods.md"


@lru_cache(maxsize=1)
def definitions() -> dict[str, str]:
    """Anchor -> the paragraph (markdown) that follows it; empty when the file is missing."""
    path = methods_path()
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    pending: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if pending and para:
            for a in pending:
                out[a] = " ".join(para)
            pending.clear()
        para.clear()

    for line in path.read_text(encoding="utf-8").splitlines():
        ids = ANCHOR.findall(line)
        if ids:
            flush()
            pending.extend(ids)
            continue
        if not line.strip() or line.startswith("#"):
            if para:
                flush()
            continue
        if pending:
            para.append(line.strip())
    flush()
    return out


def methods_anchor(metric: str) -> str:
    """The anchor of ``metric``'s definition (its own, else its stage's section)."""
    own = metric.replace(".", "-")
    defs = definitions()
    if own in defs or not defs:
        return own
    stage = metric.split(".", 1)[0]
    return stage if stage in defs else "metrics"


def definition_html(anchor: str) -> str:
    """The paragraph under ``anchor`` as HTML (escaped; ``code`` spans and **bold** kept)."""
    text = html.escape(definitions().get(anchor, ""))
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # a markdown link: its words
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
