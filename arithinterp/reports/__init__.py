"""Reports: self-contained HTML pages and JSON/Parquet exports of results."""

from arithinterp.reports.build import build_report
from arithinterp.reports.export import write_json_summary, write_parquet
from arithinterp.reports.html import (
    MAX_TABLE_ROWS,
    ReportSection,
    render_html_report,
    write_html_report,
)
from arithinterp.reports.report import AttributionReport

__all__ = [
    "AttributionReport",
    "build_report",
    "MAX_TABLE_ROWS",
    "ReportSection",
    "render_html_report",
    "write_html_report",
    "write_json_summary",
    "write_parquet",
]
