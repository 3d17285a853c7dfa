"""Look at a report as a reader would: headless Chromium loads it, checks it, screenshots it.

``check_report`` injects ``PROBE`` into a copy of the page; after load it records the images and
which failed to decode, elements sticking out past the page width (outside ``.scroll`` boxes),
the table of contents, and readability on what is displayed: words the layout split across lines,
table rows over three lines, text under ``MIN_TEXT_PX`` and figures whose smallest text is
displayed under ``MIN_FIGURE_TEXT_PX``. A figure's smallest text is its smallest font size (the
PNG text chunk ``save_figure`` writes; 10 pt without it) times its DPI / 72, scaled by its
displayed over its natural width. Needs Chromium (Debian's ``chromium``) on PATH.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from clt_bench.errors import UserError
from clt_bench.report.figure_html import png_info

MIN_TEXT_PX = 14.0  # computed font size of any displayed text
MIN_FIGURE_TEXT_PX = 10.0  # a figure's smallest text at its displayed size

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# flags for a closed network and a root user (see Chromium's headless docs)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)

PROBE = """<script>
window.addEventListener('load', () => {
  const W = document.documentElement.clientWidth;
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src);
  const over = [...document.body.querySelectorAll('*')]
    .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > W + 1)
    .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : ''));
  const toc = document.querySelectorAll('nav#toc a[href^="#"]').length;
  const shown = e => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';
  const name = e => {
    const sec = e.closest('section[id],h2[id]');
    const tag = e.tagName.toLowerCase() + (typeof e.className === 'string' && e.className
      ? '.' + e.className.split(' ')[0] : '');
    return (sec ? '#' + sec.id + ' ' : '') + tag;
  };
  const words = [], small = new Map(), range = document.createRange();
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const p = n.parentElement;
    if (!p || !n.textContent.trim() || p.closest('script,style') || !shown(p)) continue;
    const fs = parseFloat(getComputedStyle(p).fontSize);
    if (fs < MIN_TEXT) small.set(name(p) + ' ' + fs + 'px', 1);
    const re = /[^\\s\\-\\u2010-\\u2014]+/g;
    for (let m = re.exec(n.textContent); m; m = re.exec(n.textContent)) {
      range.setStart(n, m.index);
      range.setEnd(n, m.index + m[0].length);
      const tops = new Set([...range.getClientRects()].filter(r => r.width > 0)
        .map(r => Math.round(r.top)));
      if (tops.size > 1) words.push(name(p) + ': ' + m[0].slice(0, 40));
    }
  }
  const px = (s, v) => v === 'normal' ? 1.2 * parseFloat(s.fontSize) : parseFloat(v);
  const tall = [];
  for (const tr of document.querySelectorAll('tr')) {
    if (!shown(tr) || tr.querySelector('img,svg,canvas')) continue;
    let lines = 0;
    for (const c of tr.cells) {
      const s = getComputedStyle(c);
      const h = c.clientHeight - parseFloat(s.paddingTop) - parseFloat(s.paddingBottom);
      lines = Math.max(lines, h / px(s, s.lineHeight));
    }
    if (lines > 3.2) tall.push(name(tr) + ' ' + tr.innerText.slice(0, 40).replace(/\\s+/g, ' ')
      + ' (' + lines.toFixed(1) + ' lines)');
  }
  const figs = imgs.filter(i => i.dataset.textPx && shown(i) && i.naturalWidth > 0).map(i => ({
    name: i.alt || '?', px: parseFloat(i.dataset.textPx) * i.clientWidth / i.naturalWidth,
    width: i.clientWidth}));
  const result = {images: imgs.length, broken: broken, overflow: over.slice(0, 20),
                  scroll_width: document.documentElement.scrollWidth, client_width: W, toc: toc,
                  n_broken_words: words.length, broken_words: words.slice(0, 20),
                  n_tall_rows: tall.length, tall_rows: tall.slice(0, 20),
                  small_text: [...small.keys()].slice(0, 20),
                  figures: figs.length,
                  small_figures: figs.filter(f => f.px < MIN_FIG).map(
                    f => f.name + ' ' + f.px.toFixed(1) + 'px at ' + f.width + 'px wide')};
  document.body.setAttribute('data-check', JSON.stringify(result));
});
</script>"""


IMG = re.compile(r"<img\b[^>]*?\bsrc=(['\"])(.*?)\1", re.S)


def annotate_figures(page: str, folder: Path) -> str:
    """``page`` with ``data-text-px`` (``figure_html.png_info``) on every ``<img>`` whose PNG it
    can read (inline ``data:`` or a file relative to ``folder``)."""

    def one(m: re.Match[str]) -> str:
        src = m.group(2)
        try:
            if src.startswith("data:"):
                data = base64.b64decode(src.split(",", 1)[1])
            else:
                data = (folder / src).read_bytes()
        except (OSError, ValueError):
            return m.group(0)
        info = png_info(data)
        return m.group(0) if info is None else f'<img data-text-px="{info[1]:.2f}"' + m.group(0)[4:]

    return IMG.sub(one, page)


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Chromium (``chromium`` when none is found) with ``FLAGS``, a fresh profile and ``args``."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [find_chromium() or "chromium", *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _probe(page: Path, script: str, attr: str, width: int, timeout: float) -> Any:
    """Load a copy of ``page`` with ``script`` appended to its body; ``script`` sets the body's
    ``attr`` attribute to a JSON value, which is returned."""
    if find_chromium() is None:
        raise UserError("no Chromium found (install Debian's 'chromium' package).")
    # the probed copy sits beside the page, so that images it links load as they do for a reader
    probe = page.with_name(f".{page.stem}.probe.html")
    text = annotate_figures(page.read_text(encoding="utf-8"), page.parent)
    probe.write_text(text.replace("</body>", script + "</body>"), encoding="utf-8")
    try:
        out = _run(
            [
                f"--window-size={width},1000",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probe.as_uri(),
            ],
            timeout,
        )
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(rf"{attr}=\"([^\"]*)\"", out.stdout)
    if not m:
        raise UserError(f"Chromium did not load {page} ({out.stderr.strip()[-200:]}).")
    return json.loads(html.unescape(m.group(1)))


def check_report(
    html_path: str | Path,
    screenshot: str | Path | None = None,
    width: int = 1280,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Load ``html_path`` in headless Chromium; returns the probe's result (see module doc)."""
    page = Path(html_path).resolve()
    limits = f"<script>const MIN_TEXT = {MIN_TEXT_PX}, MIN_FIG = {MIN_FIGURE_TEXT_PX};</script>"
    result: dict[str, Any] = _probe(page, limits + PROBE, "data-check", width, timeout)
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        _run([f"--window-size={width},1000", f"--screenshot={shot}", page.as_uri()], timeout)
        result["screenshot"] = str(shot) if shot.is_file() else None
    return result


DRIVE = """<script>
window.addEventListener('load', () => {
  let out;
  try { out = (function () { %s })(); } catch (e) { out = {error: String(e)}; }
  document.body.setAttribute('data-drive', JSON.stringify(out === undefined ? null : out));
});
</script>"""


def drive_report(html_path: str | Path, body: str, width: int = 1280, timeout: float = 60.0) -> Any:
    """Run the JavaScript function body ``body`` in the loaded page (after the page's own
    scripts) and return what it returns (JSON); an exception comes back as ``{"error": ...}``.
    Clicks dispatched there run the page's own handlers, as a reader's would."""
    return _probe(Path(html_path).resolve(), DRIVE % body, "data-drive", width, timeout)


MAX_SHOT_HEIGHT = 16000  # px: a section taller than this is cut off in its screenshot


def screenshot_sections(
    html_path: str | Path, out_dir: str | Path, width: int = 1280, timeout: float = 60.0
) -> list[Path]:
    """One PNG per ``<section id=...>`` of the page at ``width`` px (``<id>.png`` in
    ``out_dir``): each from a copy of the page that shows that section alone, the window as tall
    as the section (at most ``MAX_SHOT_HEIGHT``)."""
    page = Path(html_path).resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = drive_report(
        page,
        "return [...document.querySelectorAll('body > section[id]')].map(s => "
        "[s.id, Math.ceil(s.getBoundingClientRect().height)]);",
        width,
        timeout,
    )
    text = page.read_text(encoding="utf-8")
    paths = []
    for sid, h in sections:
        alone = page.with_name(f".{page.stem}.{sid}.html")
        style = f"<style>body > :not(#{sid}){{display:none !important}}</style>"
        alone.write_text(text.replace("</head>", style + "</head>", 1), encoding="utf-8")
        shot = out / f"{sid}.png"
        try:
            _run(
                [
                    f"--window-size={width},{min(int(h) + 60, MAX_SHOT_HEIGHT)}",
                    "--virtual-time-budget=5000",
                    f"--screenshot={shot}",
                    alone.as_uri(),
                ],
                timeout,
            )
        finally:
            alone.unlink(missing_ok=True)
        if shot.is_file():
            paths.append(shot)
    return paths
