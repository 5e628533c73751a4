"""End to end in headless Chromium: start the app on a free port, click a heatmap cell, and
check that the detail panel shows that component, with no console errors."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from arithinterp.dashboard import create_app
from arithinterp.reports import build_report
from tests.browser import chromium_page

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]


def _artifacts() -> Path:
    folder = Path(os.environ.get("ARITHINTERP_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _built_report(root: Path) -> Path:
    """A report written by ``build_report`` on zoo:add-2d-tok (the methods that take seconds)."""
    report = build_report("zoo:add-2d-tok", None, n=24, progress=False,
                          methods=["patching", "dla", "logit_lens", "operand_maps", "circuit", "attention"])
    return report.save(root / "add-2d-tok" / "report")


@pytest.fixture
def served(tmp_path):
    report = _built_report(tmp_path / "runs")
    app = create_app(tmp_path / "runs")
    server = make_server("127.0.0.1", _free_port(), app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", report
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _cell_centre(page, graph_id: str, row: int, col: int, n_rows: int, n_cols: int) -> tuple[float, float]:
    box = page.locator(f"#{graph_id} .nsewdrag").first.bounding_box()
    return (box["x"] + (col + 0.5) * box["width"] / n_cols,
            box["y"] + (row + 0.5) * box["height"] / n_rows)


def test_click_heatmap_cell_updates_detail_panel(served):
    url, report = served
    heads = json.loads((report / "heads.json").read_text())
    with chromium_page() as (page, errors):
        page.goto(url)
        page.wait_for_selector("#heads-graph .nsewdrag", timeout=20_000)
        title = page.locator("#detail-title")
        title.wait_for(timeout=20_000)
        before = title.inner_text()
        # zoo:add-2d-tok has one layer of 4 heads: click one that is not selected yet.
        head = 1 if not before.startswith("L0H1") else 3
        page.mouse.click(*_cell_centre(page, "heads-graph", 0, head, 1, 4))
        page.wait_for_function(
            f"() => document.querySelector('#detail-title').innerText.startsWith('L0H{head}')",
            timeout=20_000)
        row = page.locator("#detail-row").inner_text()
        stored = next(r for r in heads if r["component"] == f"L0H{head}")
        assert f"L0H{head}" in row and f"{stored['patch_effect']:.4g}" in row
        page.locator("#detail-lens .js-plotly-plot").wait_for(timeout=20_000)
        assert "Not available for this component" in page.locator("#detail-neuron-map").inner_text()
        # The selected head's operand map (classified) and its clean-vs-corrupt attention pattern.
        operand = _panel(page, "Operand map")
        operand.locator(".js-plotly-plot .heatmaplayer image").first.wait_for(timeout=20_000)
        assert f"L0H{head}:" in operand.inner_text()
        attention = _panel(page, "Attention pattern (clean vs corrupt)")
        attention.locator(".js-plotly-plot").wait_for(timeout=20_000)
        traces = page.evaluate(
            """(id) => document.getElementById(id).querySelector('.js-plotly-plot')._fullData
                        .map(t => [t.name, t.type, t.x.length])""", attention.get_attribute("id"))
        assert [t[:2] for t in traces] == [["clean", "heatmap"], ["corrupt", "heatmap"]] and traces[0][2] >= 4
        page.screenshot(path=str(_artifacts() / "dashboard.png"), full_page=True)
    assert errors == []


def _panel(page, title: str):
    """The detail panel section whose heading is ``title``."""
    section = page.locator("#detail > div", has=page.locator("h4", has_text=title))
    section.first.wait_for(timeout=20_000)
    return section.first
