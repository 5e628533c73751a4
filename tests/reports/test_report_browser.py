"""report.html in headless Chromium: every figure renders, the tables sort and filter, no console errors."""

from __future__ import annotations

import pytest

from arithinterp.models import load_model
from arithinterp.reports import build_report
from arithinterp.tasks import TaskSpec
from tests.browser import chromium_page
from tests.conftest import scaled_variant

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_intra_op_thread")]


@pytest.fixture(scope="module")
def report_dir(tiny_hf_dirs, tmp_path_factory):
    path = scaled_variant(tiny_hf_dirs["gpt2"], tmp_path_factory.mktemp("scaled") / "gpt2", scale=4.0)
    spec = TaskSpec(operation="add", operand_range=(0, 4), format="plain")
    report = build_report(load_model(str(path)), spec, n=16, seed=0, progress=False,
                          methods=["patching", "attribution", "dla", "fourier", "heuristics", "circuit"])
    return report.save(tmp_path_factory.mktemp("report") / "report")


def _column(page, table: str, name: str) -> list[str]:
    return page.evaluate(
        """([table, name]) => {
            const t = document.querySelectorAll("table.interactive")[table];
            const heads = Array.from(t.tHead.rows[0].cells).map(c => c.textContent.trim());
            const col = heads.indexOf(name);
            return Array.from(t.tBodies[0].rows).filter(r => r.style.display !== "none")
                        .map(r => r.cells[col].textContent.trim());
        }""",
        [table, name],
    )


def test_report_renders_sorts_and_filters(report_dir):
    html = (report_dir / "report.html").read_text()
    n_figures = html.count('class="plotly-graph-div"')
    assert n_figures >= 8
    with chromium_page() as (page, errors):
        page.goto((report_dir / "report.html").as_uri())
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length === {n_figures}",
                               timeout=30_000)
        # Every figure div became a plot with its SVG.
        assert page.evaluate("""() => Array.from(document.querySelectorAll('div.plotly-graph-div'))
                                   .every(d => d.classList.contains('js-plotly-plot')
                                          && d.querySelector('svg.main-svg') !== null)""")
        assert page.locator("table.interactive").count() == 2  # heads, neurons

        # Sorting the head table by clicking a header: ascending, then descending.
        header = page.locator("table.interactive").nth(0).locator("thead th", has_text="patch_effect")
        header.click()
        values = [float(v) for v in _column(page, 0, "patch_effect")]
        assert values == sorted(values) and len(values) == 8
        header.click()
        assert [float(v) for v in _column(page, 0, "patch_effect")] == sorted(values, reverse=True)
        assert header.get_attribute("aria-sort") == "descending"

        # Filtering the neuron table: free text, then an exact column value and a comparison.
        box = page.locator("input.table-filter").nth(1)
        box.fill("L1N")
        layers = _column(page, 1, "layer")
        assert layers and set(layers) == {"1"}
        box.fill("layer=0 rank<20")
        ranks = [int(r) for r in _column(page, 1, "rank")]
        assert ranks and all(r < 20 for r in ranks) and set(_column(page, 1, "layer")) == {"0"}
        count = page.locator(".table-count").nth(1).text_content()
        assert count.startswith(f"{len(ranks)} of ")
        box.fill("")
        assert len(_column(page, 1, "rank")) == 2 * 128  # every neuron row again
    assert errors == []
