"""The attribution report as an object: its tables, circuit, results and summary, and the
*report directory* it saves to and loads from (layout in ``docs/report.md``).

:func:`~arithinterp.reports.build_report` makes one; the dashboard and the pipeline load one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from arithinterp.errors import ResultError
from arithinterp.methods.circuits import CircuitResult
from arithinterp.reports.export import write_parquet
from arithinterp.reports.page import render_report, write_report_html
from arithinterp.results import Result
from arithinterp.results.io import atomic_dir, to_jsonable

__all__ = ["REPORT_FILES", "AttributionReport"]

#: The files every report directory holds.
REPORT_FILES = ("summary.json", "heads.parquet", "neurons.parquet", "prompts.parquet")


@dataclass(frozen=True, eq=False)
class AttributionReport:
    """Head and neuron attribution tables, the circuit, every method's result and a summary.

    ``heads`` / ``neurons``: one row per component sorted by rank (columns in
    ``docs/report.md``); ``circuit``: the :class:`CircuitResult` or ``None``;
    ``results``: ``{name: Result}``; ``summary``: what ``summary.json`` holds;
    ``prompts``: the prompt frame the report used; ``top_prompts``:
    ``{component: [{"prompt", "value"}]}``.
    """

    heads: pd.DataFrame
    neurons: pd.DataFrame
    circuit: CircuitResult | None
    results: dict[str, Result]
    summary: dict[str, Any]
    prompts: pd.DataFrame = field(default_factory=pd.DataFrame)
    top_prompts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __repr__(self) -> str:
        c = self.summary.get("circuit") or {}
        return (f"AttributionReport(model={self.summary.get('model')!r}, heads={len(self.heads)}, "
                f"neurons={len(self.neurons)}, methods={self.summary.get('methods')}, "
                f"circuit={c.get('components')}, skipped={sorted(self.summary.get('skipped', {}))})")

    # -- disk ------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the report directory atomically (a temp directory, then one rename)."""
        page = render_report(self)  # rendered first: a failing figure leaves nothing half-written
        with atomic_dir(directory) as tmp:
            (tmp / "report.html").write_text(page, encoding="utf-8")
            (tmp / "summary.json").write_text(_json(self.summary))
            for name, frame in (("heads", self.heads), ("neurons", self.neurons)):
                write_parquet(tmp / f"{name}.parquet", frame)
                (tmp / f"{name}.json").write_text(_json(frame.to_dict(orient="records")))
            (tmp / "top_prompts.json").write_text(_json(self.top_prompts))
            write_parquet(tmp / "prompts.parquet", _parquet_safe(self.prompts))
            for name, result in self.results.items():
                result.save(tmp / "results" / name)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> AttributionReport:
        """Read a report directory written by :meth:`save`."""
        folder = Path(directory)
        if not folder.is_dir():
            raise ResultError(f"no report directory at {folder}")
        missing = [f for f in REPORT_FILES if not (folder / f).is_file()]
        if missing:
            raise ResultError(f"{folder} is not a complete report directory: missing {', '.join(missing)}")
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except json.JSONDecodeError as err:
            raise ResultError(f"{folder / 'summary.json'} is not valid JSON: {err}") from err
        results = {name: Result.load(folder / rel) for name, rel in summary.get("results", {}).items()}
        top = folder / "top_prompts.json"
        circuit = results.get("circuit")
        return cls(
            heads=pd.read_parquet(folder / "heads.parquet"),
            neurons=pd.read_parquet(folder / "neurons.parquet"),
            circuit=circuit if isinstance(circuit, CircuitResult) else None,
            results=results,
            summary=summary,
            prompts=pd.read_parquet(folder / "prompts.parquet"),
            top_prompts=json.loads(top.read_text()) if top.is_file() else {},
        )

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the self-contained ``report.html`` (plotly inlined, works offline) atomically."""
        return write_report_html(self, path)


def _json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(to_jsonable(v)))
    return out


