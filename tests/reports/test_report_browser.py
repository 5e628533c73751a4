"""report.html in headless Chromium: every figure renders, the tables sort, filter and page, the effect
chart shows every method on its own scale, the operand maps and masked probe cells show, the run's first
page links to the attribution report, no console errors."""

from __future__ import annotations

import json

import pytest
import yaml

from arithinterp.models import load_model
from arithinterp.pipeline import load_config, run_pipeline
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
                          methods=["patching", "attribution", "mediation", "dla", "fourier", "heuristics",
                                   "operand_maps", "circuit"])
    return report.save(tmp_path_factory.mktemp("report") / "report")


def _section_figure(page, title: str, index: int = 0) -> str:
    """The id of figure ``index`` of the page section titled ``title`` (waits for it to render)."""
    fid = page.evaluate(
        """([title, index]) => {
            const h = Array.from(document.querySelectorAll("section h2")).find(e => e.textContent.startsWith(title));
            const divs = h.parentElement.querySelectorAll("div.plotly-graph-div");
            return divs[index].id;
        }""", [title, index])
    page.wait_for_function(f"document.getElementById('{fid}').classList.contains('js-plotly-plot')", timeout=30_000)
    return fid


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
        assert len(_column(page, 1, "rank")) == 50  # the neuron table shows 50 rows a page
        assert page.locator(".table-count").nth(1).text_content() == f"{2 * 128} of {2 * 128} rows"
    assert errors == []


def test_effect_chart_puts_each_method_on_its_own_axis_and_patching_bars_are_visible(report_dir):
    with chromium_page() as (page, errors):
        page.goto((report_dir / "report.html").as_uri())
        fid = _section_figure(page, "Head table")
        info = page.evaluate(
            """(fid) => {
                const gd = document.getElementById(fid);
                return gd._fullData.map(t => {
                    const ya = gd._fullLayout[t.yaxis.replace("y", "yaxis")];
                    const heights = t.y.map(v => Math.abs(ya.l2p(v) - ya.l2p(0)));
                    return {name: t.name, axis: t.yaxis, max: Math.max(...heights), range: ya.range};
                });
            }""", fid)
        names = [t["name"] for t in info]
        assert names[0] == "exact patching" and {"AtP", "mediation IE (Stolfo's ratio)", "DLA"} <= set(names)
        assert "mediation, probability difference" in names
        assert len({t["axis"] for t in info}) == len(info)  # one y axis per method
        for t in info:  # every method's bars are drawn at a visible height
            assert t["max"] > 5, t
        # The patching axis spans the patching bars and their intervals only, not another method's scale.
        top = json.loads((report_dir / "heads.json").read_text())[:20]
        lo = min(0.0, *(r["patch_ci_low"] for r in top))
        hi = max(0.0, *(r["patch_ci_high"] for r in top))
        y0, y1 = info[0]["range"]
        assert lo - 0.2 * (hi - lo) <= y0 <= lo + 1e-9 and hi - 1e-9 <= y1 <= hi + 0.2 * (hi - lo)
        # The patching bars are drawn: SVG paths of non-zero height in the first bar layer.
        heights = page.evaluate(
            """(fid) => Array.from(document.getElementById(fid).querySelectorAll(".barlayer .trace")[0]
                          .querySelectorAll("path")).map(p => p.getBBox().height)""", fid)
        assert max(heights) > 40
    assert errors == []


def test_neuron_table_pages(report_dir):
    with chromium_page() as (page, errors):
        page.goto((report_dir / "report.html").as_uri())
        page.wait_for_selector("table.interactive")
        pager = page.locator(".table-page").nth(0)
        assert pager.text_content() == "page 1 of 6"  # 256 neurons, 50 a page
        assert [int(r) for r in _column(page, 1, "rank")] == list(range(1, 51))
        page.locator("button[data-page=next]").nth(0).click()
        assert pager.text_content() == "page 2 of 6"
        assert [int(r) for r in _column(page, 1, "rank")] == list(range(51, 101))
        page.locator("input.table-filter").nth(1).fill("layer=1")
        assert pager.text_content() == "page 1 of 3" and len(_column(page, 1, "rank")) == 50
        assert set(_column(page, 1, "layer")) == {"1"}
        height = page.evaluate("document.body.scrollHeight")
        assert height < 20_000
    assert errors == []


def test_operand_maps_render(report_dir):
    with chromium_page() as (page, errors):
        page.goto((report_dir / "report.html").as_uri())
        fid = _section_figure(page, "Operand maps")
        info = page.evaluate(
            """(fid) => {
                const gd = document.getElementById(fid);
                return {types: gd._fullData.map(t => t.type),
                        titles: gd._fullLayout.annotations.map(a => a.text),
                        images: gd.querySelectorAll(".heatmaplayer image").length};
            }""", fid)
        assert info["types"] and set(info["types"]) == {"heatmap"} and info["images"] == len(info["types"])
        assert any(t.startswith("L") and ("operand" in t or "result" in t or "lookup" in t or "unclassified" in t)
                   for t in info["titles"])
    assert errors == []


@pytest.fixture(scope="module")
def probe_report(tiny_hf_dirs, tmp_path_factory):
    """Two-digit answers: the teacher-forced input shows answer digits at the later positions."""
    spec = TaskSpec(operation="add", digits=2, format="fixed")
    report = build_report(load_model(str(tiny_hf_dirs["gpt2"])), spec, n=16, seed=0, progress=False,
                          methods=["probes"])
    return report, report.save(tmp_path_factory.mktemp("probes") / "report")


def test_probe_cells_at_masked_positions_are_marked(probe_report):
    report, folder = probe_report
    probes = report.results["probes"]
    n_masked = int(probes.masked().sum())
    assert n_masked > 0
    with chromium_page() as (page, errors):
        page.goto((folder / "report.html").as_uri())
        fid = _section_figure(page, "Linear probes")
        info = page.evaluate(
            """(fid) => {
                const gd = document.getElementById(fid);
                const masked = gd._fullData.filter(t => t.name === "masked");
                const scores = gd._fullData.filter(t => t.name !== "masked");
                const count = (t, f) => Array.from(t.z).flatMap(r => Array.from(r)).filter(f).length;
                return {marked: masked.reduce((s, t) => s + count(t, v => v === 1), 0),
                        hidden: scores.reduce((s, t) => s + count(t, v => v === null || Number.isNaN(v)), 0),
                        labels: Array.from(gd.querySelectorAll("text")).filter(e => e.textContent === "masked").length};
            }""", fid)
        # Every masked cell is grey, labelled "masked", and carries no score.
        assert info["marked"] == n_masked and info["hidden"] == n_masked and info["labels"] == n_masked
    assert errors == []


def test_run_page_links_to_the_attribution_report(tiny_hf_dirs, tmp_path):
    cfg = {"name": "linked", "model": str(tiny_hf_dirs["gpt2"]),
           "task": {"operation": "add", "operand_range": [0, 4], "format": "plain", "n": 16, "seed": 1},
           "steps": [{"kind": "evaluate"}, {"kind": "report", "n": 12, "methods": ["patching", "circuit"]}]}
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(cfg))
    run_pipeline(load_config(str(tmp_path / "pipe.yaml")), runs_dir=tmp_path / "runs", progress=False)
    run_dir = tmp_path / "runs" / "linked"
    # One plotly.js per run directory, shared by both pages; neither page inlines it.
    copies = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("plotly*.js"))
    assert copies == ["report/plotly.min.js"]
    for page_path in (run_dir / "report.html", run_dir / "report" / "report.html"):
        assert page_path.stat().st_size < 1_000_000
    with chromium_page() as (page, errors):
        page.goto((run_dir / "report.html").as_uri())
        link = page.locator("a", has_text="Open the attribution report")
        assert link.get_attribute("href") == "report/report.html"
        first = _section_figure(page, "Attribution report and circuit")
        assert page.evaluate(f"document.getElementById('{first}').querySelector('svg.main-svg') !== null")
        # the run's first section after any warnings (a tiny random model answers at chance)
        text = page.locator("section", has_text="Attribution report and circuit").first.inner_text()
        assert "Circuit (" in text and "faithfulness" in text
        link.click()
        page.wait_for_url("**/report/report.html")
        assert page.title().startswith("Attribution report")
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0", timeout=30_000)
    assert errors == []
