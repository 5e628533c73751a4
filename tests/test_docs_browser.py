"""The docs site in headless Chromium: every formula is typeset by the bundled KaTeX and no
request leaves the machine (no CDN, no web fonts)."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.browser import chromium_page

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]

# Text left in a page's prose (code excluded) that would mean a formula was not typeset.
_RAW_TEX = r"""() => {
    const article = document.querySelector("article").cloneNode(true);
    article.querySelectorAll(".katex, pre, code, script").forEach(n => n.remove());
    const text = article.textContent;
    return ["$$", "\\(", "\\)", "\\[", "\\]", "\\frac", "\\sum", "_{", "^{"]
        .filter(s => text.includes(s));
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The docs built as CI builds them, served on 127.0.0.1."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield out, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_formulas_render_offline(site):
    out, base = site
    pages = sorted(p for p in out.rglob("index.html") if 'class="arithmatex"' in p.read_text())
    assert len(pages) >= 5
    requests: list[str] = []
    failed: list[str] = []
    typeset = 0
    with chromium_page() as (page, errors):
        page.on("request", lambda r: requests.append(r.url))
        page.on("requestfailed", lambda r: failed.append(r.url))
        for path in pages:
            url = base + path.parent.relative_to(out).as_posix() + "/"
            page.goto(url, wait_until="load")
            n = page.locator(".arithmatex").count()
            assert n > 0, url
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('.arithmatex'))"
                ".every(e => e.querySelector('.katex-html') !== null)", timeout=20_000)
            assert page.locator(".arithmatex .katex-error").count() == 0, url
            assert page.locator(".arithmatex div.arithmatex, div.arithmatex .katex-display").count() \
                == page.locator("div.arithmatex").count()  # display formulas in display mode
            assert page.evaluate(_RAW_TEX) == [], url
            # KaTeX's own fonts are in use (loaded from the bundled copy).
            assert page.evaluate("document.fonts.check('16px KaTeX_Main')"), url
            typeset += n
        assert errors == []
    assert typeset >= 100  # the 114 formulas of the methods pages
    outside = [u for u in requests if not (u.startswith(base) or u.startswith(("data:", "blob:")))]
    assert outside == [], outside
    assert failed == []
    assert any(u.startswith(base + "assets/katex/fonts/") and u.endswith(".woff2") for u in requests)
