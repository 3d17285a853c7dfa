"""A stage's figure in the report, displayed at a width where its text is readable.

A PNG written by ``save_figure`` records its smallest font size and its DPI, so its smallest text
measures ``pt * dpi / 72`` of its pixels (``png_info``); ``display_width`` shows it wide enough
that this is at least ``MIN_DISPLAY_TEXT_PX`` on screen. PNGs up to ``INLINE_MAX_BYTES`` are
inlined, larger ones linked; the caption links the PNG and its SVG.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from clt_bench.plots import MIN_TEXT_CHUNK

MIN_DISPLAY_TEXT_PX = 10.5
DEFAULT_TEXT_PT = 10.0  # matplotlib's default tick label size, for a PNG without the text chunk
DEFAULT_WIDTH = 560  # px: the width a figure gets when its text allows (two side by side)
INLINE_MAX_BYTES = 300_000


def png_info(data: bytes) -> tuple[int, float] | None:
    """(width in pixels, smallest text height in its own pixels) of a PNG; ``None`` otherwise."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                return None
            dpi = float((im.info.get("dpi") or (72.0, 72.0))[0])
            pt = float(getattr(im, "text", {}).get(MIN_TEXT_CHUNK, DEFAULT_TEXT_PT))
            return im.width, pt * dpi / 72.0
    except (OSError, ValueError):
        return None


def display_width(width: int, smallest_text_px: float) -> int:
    """The displayed width of a ``width``-pixel PNG whose smallest text is ``smallest_text_px``
    of its pixels (see the module doc)."""
    need = math.ceil(width * MIN_DISPLAY_TEXT_PX / max(smallest_text_px, 1e-6))
    return max(need, min(width, DEFAULT_WIDTH))


def figure_html(path: Path, run_dir: Path, caption: str | None = None) -> str:
    data = path.read_bytes()
    info = png_info(data)
    rel = path.relative_to(run_dir).as_posix()
    if info is None:
        return ""
    width = display_width(*info)
    src = (
        f"data:image/png;base64,{base64.b64encode(data).decode()}"
        if len(data) <= INLINE_MAX_BYTES
        else html.escape(rel)
    )
    svg = path.with_suffix(".svg")
    links = f"<a href='{html.escape(rel)}'>PNG</a>"
    if svg.is_file():
        links += f" · <a href='{html.escape(svg.relative_to(run_dir).as_posix())}'>SVG</a>"
    name = html.escape(caption or path.name)
    return (
        f"<figure class='fig'><div class='scroll'><img src='{src}' alt='{html.escape(path.name)}'"
        f" style='width:{width}px'></div><figcaption>{name} · {links}</figcaption>"
        "</figure>"
    )
