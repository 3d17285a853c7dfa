"""Look at a report as a reader would: headless Chromium loads it, checks it, screenshots it.

``check_report`` injects a small script into a copy of the page that, after load, records how
many images there are and which failed to decode, which elements stick out past the page width
(content inside ``.scroll`` boxes scrolls and is allowed), the page's scroll width, and whether
it has a table of contents; Chromium's ``--dump-dom`` returns the result. ``--screenshot`` saves
the top of the page. Needs Debian's ``chromium`` (or any Chromium/Chrome on PATH).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from clt_bench.errors import UserError

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
  const result = {images: imgs.length, broken: broken, overflow: over.slice(0, 20),
                  scroll_width: document.documentElement.scrollWidth, client_width: W, toc: toc};
  document.body.setAttribute('data-check', JSON.stringify(result));
});
</script>"""


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [*args[:1], *FLAGS, f"--user-data-dir={profile}", *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def check_report(
    html_path: str | Path,
    screenshot: str | Path | None = None,
    width: int = 1280,
    timeout: float = 60.0,
) -> dict:
    """Load ``html_path`` in headless Chromium; returns the probe's result (see module doc)."""
    exe = find_chromium()
    if exe is None:
        raise UserError("no Chromium found (install Debian's 'chromium' package).")
    page = Path(html_path).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / page.name
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
        out = _run(
            [
                exe,
                f"--window-size={width},1000",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probe.as_uri(),
            ],
            timeout,
        )
    m = re.search(r"data-check=\"([^\"]*)\"", out.stdout)
    if not m:
        raise UserError(f"Chromium did not load {page} ({out.stderr.strip()[-200:]}).")
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        _run([exe, f"--window-size={width},1000", f"--screenshot={shot}", page.as_uri()], timeout)
        result["screenshot"] = str(shot) if shot.is_file() else None
    return result
