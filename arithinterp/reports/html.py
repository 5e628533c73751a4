"""Self-contained HTML reports: plotly figures and tables in one offline file.

The page inlines plotly.js once (when it has any figure), or, for pages that live
together in one run directory, loads it from one shared local file
(``plotly_js="plotly.min.js"``, written by :func:`write_plotly_js`): still offline,
and ~5 MB once per run instead of once per page. Each figure is a div that calls
plotly, all text and table content is escaped, and the page is written
atomically: the whole page is rendered in memory before anything touches
the disk, so a figure that fails to render leaves the previous file intact.
Long interactive tables are paginated in the page (``page_size``).
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from arithinterp.results.io import atomic_write_text
from arithinterp.results.meta import package_version

if TYPE_CHECKING:
    from arithinterp.results.base import Result

__all__ = ["MAX_TABLE_ROWS", "PLOTLY_JS", "ReportSection", "render_html_report", "write_html_report",
           "write_plotly_js"]

#: The file name of the shared plotly.js copy beside pages that load it (:func:`write_plotly_js`).
PLOTLY_JS = "plotly.min.js"

#: Tables longer than this show their first rows only, and say so.
MAX_TABLE_ROWS = 200

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-alt: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
header, nav, main { max-width: 1200px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; border-bottom: 1px solid var(--line); }
h1 { font-size: 1.8em; margin: 0 0 4px; }
h2 { font-size: 1.35em; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.generated, .note { color: var(--muted); font-size: 0.9em; }
nav.toc ol { margin: 8px 0 16px; padding-left: 22px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
figure { margin: 16px 0; min-height: 420px; }
.table-wrap { overflow-x: auto; margin: 16px 0; }
table.data { border-collapse: collapse; font-size: 0.88em; font-variant-numeric: tabular-nums; }
.caption { font-weight: 600; margin: 4px 0; }
table.data th, table.data td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; }
table.data thead th { background: var(--bg-alt); position: sticky; top: 0; }
table.data tbody tr:nth-child(even) { background: var(--bg-alt); }
table.interactive thead th { cursor: pointer; user-select: none; white-space: nowrap; }
table.interactive thead th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.interactive thead th[aria-sort="descending"]::after { content: " \\25BC"; }
input.table-filter { font: inherit; padding: 4px 8px; margin: 4px 0; width: 360px; max-width: 100%; }
.table-count, .table-page { color: var(--muted); font-size: 0.85em; margin-left: 8px; }
.table-pager button { font: inherit; font-size: 0.85em; margin-left: 6px; }
td.masked, .masked { color: var(--muted); font-style: italic; }
p.links a { font-weight: 600; }
"""

# Sorting (click a header; again to reverse) and filtering (every space-separated term must
# appear in the row; "col=value" matches one column exactly, "col>x" / "col<x" compare numbers).
_TABLE_JS = """
(function () {
  function cellValue(td) {
    var t = td.textContent.trim();
    var x = parseFloat(t);
    return (t !== "" && !isNaN(x) && /^[-+]?[0-9.eE+-]+$/.test(t)) ? x : t.toLowerCase();
  }
  function compare(a, b) {
    var an = typeof a === "number", bn = typeof b === "number";
    if (an && bn) return a - b;
    if (a === "" && b !== "") return 1;
    if (b === "" && a !== "") return -1;
    if (an) return -1;
    if (bn) return 1;
    return a < b ? -1 : (a > b ? 1 : 0);
  }
  function setup(table) {
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var names = heads.map(function (th) { return th.textContent.trim().toLowerCase(); });
    var body = table.tBodies[0];
    heads.forEach(function (th, col) {
      th.setAttribute("role", "button");
      th.title = "sort by " + th.textContent.trim();
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var c = compare(cellValue(r1.cells[col]), cellValue(r2.cells[col]));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
        if (table.arithRender) table.arithRender();
      });
    });
    var wrap = table.closest(".table-wrap");
    var input = wrap && wrap.querySelector("input.table-filter");
    var count = wrap && wrap.querySelector(".table-count");
    var size = parseInt(table.getAttribute("data-page-size") || "0", 10);
    var pageLabel = wrap && wrap.querySelector(".table-page");
    var page = 0;
    var matching = function (row) { return true; };
    function render() {
      var rows = Array.prototype.slice.call(body.rows).filter(function (r) { return matching(r); });
      var pages = size > 0 ? Math.max(1, Math.ceil(rows.length / size)) : 1;
      page = Math.min(Math.max(page, 0), pages - 1);
      Array.prototype.forEach.call(body.rows, function (r) { r.style.display = "none"; });
      rows.forEach(function (r, i) {
        if (size <= 0 || (i >= page * size && i < (page + 1) * size)) r.style.display = "";
      });
      if (count) count.textContent = rows.length + " of " + body.rows.length + " rows";
      if (pageLabel) pageLabel.textContent = "page " + (page + 1) + " of " + pages;
    }
    table.arithRender = render;
    if (wrap) {
      Array.prototype.forEach.call(wrap.querySelectorAll("button[data-page]"), function (b) {
        b.addEventListener("click", function () {
          page += b.getAttribute("data-page") === "next" ? 1 : -1;
          render();
        });
      });
    }
    render();
    if (!input) return;
    function matches(row, term) {
      var m = term.match(/^([a-z_0-9]+)(=|>|<)(.*)$/);
      if (m && names.indexOf(m[1]) >= 0) {
        var v = cellValue(row.cells[names.indexOf(m[1])]);
        var want = cellValue({textContent: m[3]});
        if (m[2] === "=") return String(v) === String(want);
        if (typeof v !== "number" || typeof want !== "number") return false;
        return m[2] === ">" ? v > want : v < want;
      }
      return row.textContent.toLowerCase().indexOf(term) >= 0;
    }
    input.addEventListener("input", function () {
      var terms = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
      matching = function (row) { return terms.every(function (t) { return matches(row, t); }); };
      page = 0;
      render();
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.interactive"), setup);
  });
})();
"""


@dataclasses.dataclass(frozen=True)
class ReportSection:
    """One titled part of a report: prose, then figures, then tables.

    ``text`` is plain text (escaped; blank lines separate paragraphs). A
    table's ``frame.attrs["title"]``, when set, becomes its caption.
    ``interactive`` tables get sortable headers and a filter box (a small
    inline script, no external files); ``max_rows``, when set, overrides the
    report's row limit for this section's tables; ``page_size``, when set, shows
    an interactive table that many rows at a time (prev / next). ``links`` are
    ``(href, text)`` pairs shown under the title (relative paths to pages beside it).
    """

    title: str
    figures: list[go.Figure] = dataclasses.field(default_factory=list)
    tables: list[pd.DataFrame] = dataclasses.field(default_factory=list)
    text: str = ""
    interactive: bool = False
    max_rows: int | None = None
    page_size: int | None = None
    links: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_result(
        cls, result: Result, *, title: str | None = None, top_k: int = 20, text: str = ""
    ) -> ReportSection:
        """A section showing a result's figure and its ``top_k`` cells."""
        table = result.top(top_k)
        table.attrs["title"] = f"Top {len(table)} by |{result.metric}|"
        return cls(
            title=title or result.title(), figures=[result.plot()], tables=[table], text=text
        )


def _paragraphs(text: str) -> str:
    blocks = [b.strip() for b in text.strip().split("\n\n") if b.strip()]
    return "".join(f"<p>{html.escape(b)}</p>\n" for b in blocks)


def _figure_html(fig: go.Figure, div_id: str) -> str:
    if not isinstance(fig, go.Figure):
        raise TypeError(f"report figures must be plotly Figures, got {type(fig).__name__}")
    body = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"responsive": True, "displaylogo": False},
    )
    return f"<figure>{body}</figure>\n"


def _format_cell(value: object) -> str:
    return f"{value:.4g}"


def _links_html(links: Sequence[tuple[str, str]]) -> str:
    if not links:
        return ""
    items = " · ".join(f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>' for href, text in links)
    return f'<p class="links">{items}</p>\n'


def _table_html(frame: pd.DataFrame, max_rows: int, interactive: bool = False, page_size: int | None = None) -> str:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"report tables must be pandas DataFrames, got {type(frame).__name__}")
    shown = frame.head(max_rows)
    plain_index = isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0
    body = shown.to_html(
        escape=True,
        index=not plain_index,
        border=0,
        classes="data interactive" if interactive else "data",
        na_rep="",
        float_format=_format_cell,
    )
    caption = frame.attrs.get("title")
    caption_html = f'<p class="caption">{html.escape(str(caption))}</p>\n' if caption else ""
    note = ""
    if len(frame) > max_rows:
        note = f'<p class="note">Showing the first {max_rows} of {len(frame)} rows.</p>\n'
    controls = ""
    if interactive:
        controls = (
            '<input class="table-filter" type="search" placeholder="filter: terms, col=value, col&gt;x" '
            f'aria-label="filter rows"><span class="table-count">{len(shown)} of {len(shown)} rows</span>\n'
        )
        if page_size:
            pages = max(1, -(-len(shown) // page_size))
            controls += ('<span class="table-pager"><button type="button" data-page="prev">&lsaquo; prev</button>'
                         '<button type="button" data-page="next">next &rsaquo;</button>'
                         f'<span class="table-page">page 1 of {pages}</span></span>\n')
            body = body.replace("<table ", f'<table data-page-size="{int(page_size)}" ', 1)
    return f'<div class="table-wrap">\n{caption_html}{controls}{body}\n{note}</div>\n'


def render_html_report(
    *, title: str, sections: Sequence[ReportSection], max_rows: int = MAX_TABLE_ROWS,
    plotly_js: str | None = None,
) -> str:
    """The report page as a string (see :func:`write_html_report`); ``plotly_js``: ``None``
    inlines plotly.js, a relative path loads that local copy instead (:func:`write_plotly_js`)."""
    esc = html.escape
    toc = []
    parts = []
    for i, section in enumerate(sections, start=1):
        if not isinstance(section, ReportSection):
            raise TypeError(f"sections must be ReportSection, got {type(section).__name__}")
        anchor = f"section-{i}"
        toc.append(f'<li><a href="#{anchor}">{esc(section.title)}</a></li>')
        parts.append(f'<section id="{anchor}">\n<h2>{esc(section.title)}</h2>\n')
        parts.append(_links_html(section.links))
        parts.append(_paragraphs(section.text))
        parts.extend(
            _figure_html(fig, f"figure-{i}-{j}") for j, fig in enumerate(section.figures, 1)
        )
        rows = max_rows if section.max_rows is None else section.max_rows
        parts.extend(_table_html(frame, rows, section.interactive, section.page_size) for frame in section.tables)
        parts.append("</section>\n")
    has_figures = any(s.figures for s in sections)
    # Inlined once, in the head, so every figure's newPlot call finds it: no CDN, no server.
    script = ""
    if has_figures and plotly_js is None:
        script = f"<script>{plotly.offline.get_plotlyjs()}</script>\n"
    elif has_figures:
        script = f'<script src="{html.escape(plotly_js, quote=True)}"></script>\n'
    if any(s.interactive and s.tables for s in sections):
        script += f"<script>{_TABLE_JS}</script>\n"
    toc_html = (
        f'<nav class="toc">\n<h2>Contents</h2>\n<ol>\n{"".join(toc)}\n</ol>\n</nav>\n'
        if toc
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n{script}</head>\n<body>\n"
        f"<header>\n<h1>{esc(title)}</h1>\n"
        f'<p class="generated">Generated by arithinterp {esc(package_version())}</p>\n</header>\n'
        f"{toc_html}<main>\n{''.join(parts)}</main>\n</body>\n</html>\n"
    )


def write_html_report(
    path: str | os.PathLike[str],
    *,
    title: str,
    sections: Sequence[ReportSection],
    max_rows: int = MAX_TABLE_ROWS,
    plotly_js: str | None = None,
) -> Path:
    """Write a self-contained, offline HTML report to ``path`` atomically.

    One file: inline CSS, a table of contents, plotly.js inlined once, one
    div per figure, tables escaped (the first ``max_rows`` rows of long ones,
    with a note). Everything is rendered before the file is replaced, so an
    error leaves any previous report at ``path`` untouched. ``plotly_js``: see
    :func:`render_html_report`.
    """
    page = render_html_report(title=title, sections=sections, max_rows=max_rows, plotly_js=plotly_js)
    return atomic_write_text(path, page)


def write_plotly_js(directory: str | os.PathLike[str]) -> Path:
    """Write plotly.js (the installed plotly's bundle) to ``directory/plotly.min.js`` once, for
    the pages of one run to share offline; an existing identical copy is left alone."""
    path = Path(directory) / PLOTLY_JS
    code = plotly.offline.get_plotlyjs()
    if path.is_file() and path.stat().st_size == len(code.encode("utf-8")):
        return path
    return atomic_write_text(path, code)
