"""The HTML report is one offline file, escapes what it shows, and is written atomically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
import pytest

from arithinterp.reports import (
    ReportSection,
    write_html_report,
    write_json_summary,
    write_parquet,
)
from arithinterp.results import EstimateTable, ResultMeta, ScalarTable

PLOTLY_JS = plotly.offline.get_plotlyjs()


def bar(name: str) -> go.Figure:
    return go.Figure(go.Bar(x=["a", "b"], y=[1, 2], name=name))


def sections() -> list[ReportSection]:
    table = pd.DataFrame({"head": [0, 1], "effect": [0.5, -0.25]})
    return [
        ReportSection("Heads", figures=[bar("one"), bar("two")], tables=[table], text="Intro."),
        ReportSection("Neurons", figures=[bar("three")]),
        ReportSection("Notes", text="No figures here."),
    ]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_one_self_contained_file_with_plotly_once_and_a_div_per_figure(tmp_path: Path) -> None:
    path = write_html_report(
        tmp_path / "report.html", title="Addition circuit", sections=sections()
    )
    assert path == tmp_path / "report.html" and listing(tmp_path) == ["report.html"]
    page = path.read_text(encoding="utf-8")
    assert page.count(PLOTLY_JS) == 1
    assert page.count(PLOTLY_JS[:300]) == 1  # no second, differently-wrapped copy either
    assert page.count('class="plotly-graph-div"') == 3
    assert len(set(re.findall(r'<div id="(figure-[0-9-]+)"', page))) == 3
    assert re.search(r"<script[^>]*\bsrc\s*=", page) is None
    assert "<link" not in page and "cdn.plot.ly" not in page.replace(PLOTLY_JS, "")
    # The contents link to every section.
    for i, name in enumerate(["Heads", "Neurons", "Notes"], start=1):
        assert f'<a href="#section-{i}">{name}</a>' in page
        assert f'<section id="section-{i}">' in page


def test_without_figures_plotly_is_not_inlined(tmp_path: Path) -> None:
    page = write_html_report(
        tmp_path / "r.html", title="t", sections=[ReportSection("only text", text="x")]
    ).read_text()
    assert PLOTLY_JS[:300] not in page and "<script" not in page


def test_text_titles_and_tables_are_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    table = pd.DataFrame({"<i>col</i>": [evil, "a & b"]})
    table.attrs["title"] = "<b>caption</b>"
    section = ReportSection(evil, figures=[bar(evil)], tables=[table], text=f"{evil}\n\nsecond")
    page = write_html_report(tmp_path / "r.html", title=evil, sections=[section]).read_text()
    body = page.replace(PLOTLY_JS, "")
    assert evil not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "&lt;i&gt;col&lt;/i&gt;" in body and "a &amp; b" in body
    assert "&lt;b&gt;caption&lt;/b&gt;" in body
    assert "<p>second</p>" in body


def test_long_tables_are_truncated_with_a_note(tmp_path: Path) -> None:
    table = pd.DataFrame({"neuron": np.arange(250), "score": np.linspace(0, 1, 250)})
    section = ReportSection("Neurons", tables=[table])
    page = write_html_report(tmp_path / "r.html", title="t", sections=[section]).read_text()
    assert page.count("<tr") == 201  # header row + first 200
    assert "Showing the first 200 of 250 rows" in page
    short = write_html_report(
        tmp_path / "s.html", title="t", sections=[ReportSection("n", tables=[table.head(5)])]
    ).read_text()
    assert "Showing the first" not in short


def test_failing_figure_leaves_previous_report_intact(tmp_path: Path) -> None:
    path = write_html_report(tmp_path / "report.html", title="first", sections=sections())
    before = path.read_bytes()

    class Broken(go.Figure):
        def to_html(self, *args, **kwargs):
            raise RuntimeError("cannot render")

    bad = [ReportSection("ok", figures=[bar("fine")]), ReportSection("bad", figures=[Broken()])]
    with pytest.raises(RuntimeError, match="cannot render"):
        write_html_report(path, title="second", sections=bad)
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["report.html"]
    with pytest.raises(TypeError, match="plotly Figures"):
        write_html_report(path, title="x", sections=[ReportSection("s", figures=["nope"])])
    assert path.read_bytes() == before


def test_section_from_result(tmp_path: Path) -> None:
    res = ScalarTable.example()
    section = ReportSection.from_result(res, top_k=4)
    assert section.title == res.title() and len(section.figures) == 1
    (table,) = section.tables
    assert len(table) == 4 and table.attrs["title"] == "Top 4 by |logit_diff|"
    page = write_html_report(tmp_path / "r.html", title="t", sections=[section]).read_text()
    assert "logit_diff" in page


def test_json_summary_and_parquet_exports(tmp_path: Path) -> None:
    est = EstimateTable.example()
    summary = {
        "meta": est.meta,
        "top": est.top(2),
        "best": np.float64(0.9),
        "undefined": float("nan"),
    }
    path = write_json_summary(tmp_path / "summary.json", summary)
    loaded = json.loads(path.read_text())
    assert loaded["meta"] == est.meta.to_dict()
    assert loaded["top"][0]["rank"] == 1 and loaded["undefined"] is None
    assert ResultMeta.from_dict(loaded["meta"]) == est.meta

    frame = est.to_frame()
    out = write_parquet(tmp_path / "frame.parquet", frame)
    back = pd.read_parquet(out)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert listing(tmp_path) == ["frame.parquet", "summary.json"]
