"""Headless Chromium for end-to-end tests: Debian's ``/usr/bin/chromium`` driven by Playwright.

Tests that use :func:`chromium_page` are marked ``browser``. Where Chromium or
Playwright is missing they skip, except under ``ARITHINTERP_REQUIRE_BROWSER=1``
(set by ``.ci/run``), where a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"

#: The machine's network is closed: without the background-networking flags
#: Chromium keeps trying (and failing) to reach Google's hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _require_or_skip(reason: str) -> None:
    if os.environ.get("ARITHINTERP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test cannot run: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium_page(*, viewport: tuple[int, int] = (1400, 1000)) -> Iterator[tuple[object, list[str]]]:
    """Yield ``(page, console_errors)``: a fresh Playwright page and the list that
    collects every console error and uncaught page error while it is open."""
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        _require_or_skip(f"{CHROMIUM} not found (Debian package 'chromium')")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require_or_skip("playwright is not installed (pip install -e '.[dev]')")
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            context.close()
