"""The attribution report as an object: its tables, circuit, results and summary, and the
*report directory* it saves to and loads from (layout in ``docs/report.md``).

:func:`~arithinterp.reports.build_report` makes one; the dashboard and the pipeline load one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from arithinterp.errors import ResultError
from arithinterp.methods.circuits import CircuitResult
from arithinterp.reports.export import write_parquet
from arithinterp.reports.html import PLOTLY_JS, write_plotly_js
from arithinterp.reports.page import render_report, write_report_html
from arithinterp.results import Result
from arithinterp.results.io import atomic_dir, check_replaceable, to_jsonable

__all__ = ["REPORT_FILES", "AttributionReport", "ReportFiles", "read_report_files"]

#: The files every report directory holds.
REPORT_FILES = ("summary.json", "heads.parquet", "neurons.parquet", "prompts.parquet")


@dataclass(frozen=True)
class ReportFiles:
    """What a report directory's files hold, checked: the summary, the head and neuron tables,
    and the top prompts (results are read separately, by the names the summary lists)."""

    summary: dict[str, Any]
    heads: pd.DataFrame
    neurons: pd.DataFrame
    top_prompts: dict[str, list[dict[str, Any]]]

    @property
    def result_paths(self) -> dict[str, str]:
        """``{result name: path relative to the directory}`` as the summary lists them."""
        return {str(k): str(v) for k, v in (self.summary.get("results") or {}).items()}


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultError(f"{path} is missing ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultError(f"{path} is not valid JSON ({what}): {err}") from err


def _read_table(locate: Callable[[str], Path], stem: str) -> pd.DataFrame:
    """``<stem>.parquet``, else ``<stem>.json`` (records), else an empty frame."""
    parquet, records = locate(f"{stem}.parquet"), locate(f"{stem}.json")
    if parquet.is_file():
        try:
            frame = pd.read_parquet(parquet)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise ResultError(f"{parquet} cannot be read as Parquet: {err}") from err
    elif records.is_file():
        rows = _read_json(records, f"the {stem} table")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ResultError(f"{records} must be a JSON list of row objects (orient='records')")
        frame = pd.DataFrame.from_records(rows)
    else:
        return pd.DataFrame()
    if len(frame) and "component" not in frame.columns:
        raise ResultError(f"the {stem} table of {parquet.parent} has no 'component' column")
    return frame.reset_index(drop=True)


def read_report_files(folder: str | os.PathLike[str], *,
                      locate: Callable[[str], Path] | None = None) -> ReportFiles:
    """Read and check a report directory's summary, tables and top prompts (``ResultError`` saying
    what is missing or malformed). ``locate(relative) -> path`` resolves every file read (the
    dashboard passes one that refuses paths leaving the directory); it also checks each result
    path the summary lists."""
    folder = Path(folder)
    locate = locate or (lambda rel: folder / rel)
    summary = _read_json(locate("summary.json"), "the report summary")
    if not isinstance(summary, dict):
        raise ResultError(f"{folder / 'summary.json'} must hold a JSON object")
    heads, neurons = _read_table(locate, "heads"), _read_table(locate, "neurons")
    if heads.empty and neurons.empty:
        raise ResultError(f"{folder} has neither a head table nor a neuron table "
                          "(heads.parquet / heads.json, neurons.parquet / neurons.json)")
    top_path = locate("top_prompts.json")
    top = _read_json(top_path, "top prompts") if top_path.is_file() else {}
    if not isinstance(top, dict):
        raise ResultError(f"{top_path} must map component labels to lists of prompts")
    listed = summary.get("results") or {}
    if not isinstance(listed, dict):
        raise ResultError(f"'results' in {folder / 'summary.json'} must be an object name -> path")
    for rel in listed.values():  # a summary naming paths the locator refuses fails up front
        locate(str(rel))
    return ReportFiles(summary=summary, heads=heads, neurons=neurons, top_prompts=top)


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

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the report directory atomically (a temp directory, then one rename): ``report.html``
        loads ``plotly.min.js`` beside it, so the directory works offline as a whole.

        An existing ``directory`` must be empty or one arithinterp wrote (``OutputError``
        otherwise, unless ``overwrite=True``): replacing it deletes what it held."""
        check_replaceable(directory, overwrite=overwrite)  # before the (slow) rendering
        # Rendered first: a failing figure leaves nothing half-written. The page loads plotly.js
        # from one copy in the directory (offline), which the run's other pages share.
        page = render_report(self, plotly_js=PLOTLY_JS)
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            (tmp / "report.html").write_text(page, encoding="utf-8")
            write_plotly_js(tmp)
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
        files = read_report_files(folder)
        results = {name: Result.load(folder / rel) for name, rel in files.result_paths.items()}
        circuit = results.get("circuit")
        return cls(
            heads=files.heads,
            neurons=files.neurons,
            circuit=circuit if isinstance(circuit, CircuitResult) else None,
            results=results,
            summary=files.summary,
            prompts=_read_prompts(folder / "prompts.parquet"),
            top_prompts=files.top_prompts,
        )

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the self-contained ``report.html`` (plotly inlined, works offline) atomically."""
        return write_report_html(self, path)


def _read_prompts(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ResultError(f"{path} cannot be read as Parquet: {err}") from err


def _json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(to_jsonable(v)))
    return out


