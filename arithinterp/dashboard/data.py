"""Loading a finished run for the dashboard, and reading one component's evidence out of it.

A run is found from the path the user gives (a report directory, a run
directory with ``report/`` inside, or a directory of runs) once, before the
server starts; everything the dashboard reads afterwards is addressed by a
*key* (a run name from that fixed list) and a *component label*, never by a
path coming from the browser. Every file read goes through :func:`inside`,
which refuses anything that resolves outside the run directory (``..``,
absolute paths, symlinks pointing out).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arithinterp.errors import ArithInterpError, ResultError, SiteError
from arithinterp.methods.registry import methods
from arithinterp.models.site import LABEL_FORMS, Site
from arithinterp.reports.report import read_report_files
from arithinterp.results import Result

__all__ = [
    "Component",
    "component_site",
    "DashboardError",
    "Report",
    "RunSet",
    "find_reports",
    "inside",
    "known_result_names",
    "parse_component",
]


def known_result_names() -> tuple[str, ...]:
    """The result directories a report may hold: what the registered methods' report views and
    dashboard panels declare (the report contract); a report's summary may list more of the
    same form (``key_frequencies_L0``)."""
    names: list[str] = []
    for spec in methods().values():
        if spec.report is not None:
            names += spec.report.result_names()
        names += [panel.result for panel in spec.panels]
    return tuple(dict.fromkeys(names))


SUMMARY = "summary.json"
_RESULT_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
#: The site kinds a dashboard component can be, and the dashboard's word for each.
_COMPONENT_KINDS = {"attn_head": "head", "mlp_post": "neuron", "mlp_out": "mlp"}


class DashboardError(ArithInterpError, ValueError):
    """A run directory the dashboard cannot serve (missing, malformed, or a path outside it)."""


def inside(root: Path, relative: str | Path) -> Path:
    """``root / relative``, refusing a path that leaves ``root`` (``..``, absolute, symlinks)."""
    rel = Path(relative)
    if rel.is_absolute() or rel.drive:
        raise DashboardError(f"{str(relative)!r} is an absolute path; only paths inside {root} are served")
    base = root.resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise DashboardError(f"{str(relative)!r} points outside the run directory {root}; refused")
    return target


# ---- components ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """A head (``L0H1``), a neuron (``L0N17``) or a whole MLP (``MLP0``)."""

    label: str
    kind: str  # "head" | "neuron" | "mlp"
    layer: int
    index: int | None  # head or neuron number


def component_site(comp: Component) -> Site:
    """The :class:`Site` a component names (a head, a neuron, or a whole MLP)."""
    return Site.from_label(comp.label)


def parse_component(label: Any) -> Component:
    """The component a label names (read by :meth:`Site.from_label`); ``DashboardError`` for anything else."""
    try:
        site = Site.from_label(label)
    except SiteError:
        site = None
    unit = None if site is None else site.head if site.kind == "attn_head" else site.neuron
    if site is None or site.kind not in _COMPONENT_KINDS or site.pos is not None or (
            site.kind != "mlp_out" and unit is None):
        forms = ", ".join(repr(LABEL_FORMS[k]) for k in _COMPONENT_KINDS)
        raise DashboardError(f"{label!r} is not a component label; valid: {forms}")
    return Component(label, _COMPONENT_KINDS[site.kind], int(site.layer), unit)


# ---- one report -----------------------------------------------------------------------------


@dataclass
class Report:
    """One report directory: summary, head and neuron tables, top prompts, and its results
    (loaded on first use with :meth:`Result.load`)."""

    root: Path
    name: str
    summary: dict[str, Any]
    heads: pd.DataFrame
    neurons: pd.DataFrame
    top_prompts: dict[str, list[dict[str, Any]]]
    _results: dict[str, Result | None] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, root: str | Path, name: str | None = None) -> Report:
        """Read ``root`` (a report directory); ``DashboardError`` says what is missing or malformed."""
        root = Path(root)
        try:
            files = read_report_files(root, locate=lambda rel: inside(root, rel))
        except ResultError as err:
            raise DashboardError(str(err)) from err
        return cls(root=root, name=name or root.name, summary=files.summary, heads=files.heads,
                   neurons=files.neurons, top_prompts=files.top_prompts)

    @property
    def title(self) -> str:
        model = self.summary.get("model") or "?"
        return f"{self.name} ({model}, {self.summary.get('n_prompts', '?')} prompts)"

    @property
    def result_names(self) -> list[str]:
        """The contract's result names and any others the summary lists (``key_frequencies_L0``)."""
        listed = [n for n in (self.summary.get("results") or {}) if _RESULT_NAME_RE.match(str(n))]
        return list(dict.fromkeys([*known_result_names(), *listed]))

    def result(self, name: str) -> Result | None:
        """Result ``name`` (one of :attr:`result_names`), or None when this report has none."""
        if name not in self.result_names:
            raise DashboardError(f"unknown result {name!r}; valid: {self.result_names}")
        if name not in self._results:
            rel = (self.summary.get("results") or {}).get(name, f"results/{name}")
            folder = inside(self.root, str(rel))
            self._results[name] = Result.load(folder) if folder.is_dir() else None
        return self._results[name]

    def table(self, kind: str) -> pd.DataFrame:
        return self.heads if kind == "head" else self.neurons

    def row(self, label: str) -> dict[str, Any] | None:
        """The table row of component ``label`` (JSON-safe values), or None."""
        comp = parse_component(label)
        frame = self.table("head" if comp.kind == "head" else "neuron")
        if frame.empty:
            return None
        hit = frame[frame["component"] == label]
        return None if hit.empty else json_row(hit.iloc[0].to_dict())


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A table row with numpy scalars made plain and NaN made None (what the browser gets)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value) or value is pd.NA or value is pd.NaT:
            value = None
        out[str(key)] = value
    return out


# ---- finding the reports ------------------------------------------------------------------


def _report_dir(path: Path) -> Path | None:
    if (path / SUMMARY).is_file():
        return path
    if (path / "report" / SUMMARY).is_file():
        return path / "report"
    return None


def find_reports(run_dir: str | Path) -> dict[str, Path]:
    """Name -> report directory for ``run_dir``: a report directory, a run directory
    (``report/`` inside) or a directory of runs (each child one of those)."""
    root = Path(run_dir).expanduser()
    if not root.exists():
        raise DashboardError(f"{root} does not exist; give a report directory, a run directory "
                             "(runs/<name>/) or a directory of runs (runs/)")
    if not root.is_dir():
        raise DashboardError(f"{root} is not a directory; give a report directory, a run "
                             "directory (runs/<name>/) or a directory of runs (runs/)")
    own = _report_dir(root)
    if own is not None:
        inside(root, own.relative_to(root))  # a report/ symlinked out of the run is refused
        resolved = root.resolve()
        name = resolved.parent.name if own == root and resolved.name == "report" else resolved.name
        return {name: own}
    found = {}
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        report = _report_dir(child)
        if report is not None:
            inside(root, child.name)  # a symlinked run pointing elsewhere is refused,
            inside(child, report.relative_to(child))  # and so is a report/ symlinked out of its run
            found[child.name] = report
    if not found:
        raise DashboardError(
            f"no report found under {root}: expected {SUMMARY} (a report directory), "
            f"report/{SUMMARY} (a run directory), or subdirectories holding either (a directory "
            "of runs). Run the pipeline's 'report' step (or build_report(...).save(dir)) first."
        )
    return found


class RunSet:
    """The reports the dashboard serves, by name; all loaded (and so checked) up front."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir).expanduser().resolve()
        self.reports = {name: Report.load(path, name) for name, path in find_reports(self.root).items()}

    @property
    def names(self) -> list[str]:
        return list(self.reports)

    def get(self, name: Any) -> Report:
        """The report called ``name``; ``DashboardError`` for any other value (never a path)."""
        if not isinstance(name, str) or name not in self.reports:
            raise DashboardError(f"unknown run {name!r}; this dashboard serves {self.names}")
        return self.reports[name]
