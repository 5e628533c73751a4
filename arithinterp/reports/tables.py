"""The head and neuron tables of an attribution report, assembled from method results.

The method columns are the registered methods' report columns
(:class:`~arithinterp.methods.ReportColumn`), each read from one method's result (nothing
is recomputed here); this module adds the rank and the agreement flags. The tests check the
tables cell by cell against the methods called directly. See ``docs/report.md`` for every
column.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from arithinterp.methods.probe_analyses import PROBE_DECODABLE, PROBE_MARGIN, probe_evidence
from arithinterp.methods.registry import ReportColumn, methods
from arithinterp.models import Model, Site
from arithinterp.reports.inputs import report_methods
from arithinterp.results import Result

__all__ = [
    "AGREE_K",
    "AGREEMENT",
    "HEAD_COLUMNS",
    "MAX_NEURONS",
    "NEURON_COLUMNS",
    "PROBE_DECODABLE",
    "PROBE_MARGIN",
    "agreement",
    "head_table",
    "neuron_table",
    "probe_evidence",
    "table_columns",
]

#: "Top-k" of the agreement flags: this many components, or 5% of the table if more.
AGREE_K = 5
#: Neuron tables of larger models keep the top-ranked rows only.
MAX_NEURONS = 5000
#: The agreement flags: ``flag -> (column compared with the reference, same sign required)``.
#: The reference is ``patch_effect`` (else ``atp``); a flag whose column is absent is ``None``.
AGREEMENT = {"agree_atp": ("atp", True), "agree_ie": ("mediation_ie", False), "agree_dla": ("dla", False)}

_BASE = {"heads": ("component", "kind", "layer", "head"), "neurons": ("component", "kind", "layer", "neuron")}


def _columns(table: str) -> list[ReportColumn]:
    """The registered report columns of one table, in report order (methods, then declaration)."""
    registry = methods()
    return [c for name in report_methods() for c in registry[name].report.columns if c.table == table]


def table_columns(table: str) -> tuple[str, ...]:
    """The columns of the ``"heads"`` or ``"neurons"`` table, in order."""
    names = list(dict.fromkeys(c.name for c in _columns(table)))
    return (*_BASE[table], "rank", *names, *AGREEMENT, "agree")


#: Columns of the head and neuron tables with the built-in methods (see :func:`table_columns`).
HEAD_COLUMNS = table_columns("heads")
NEURON_COLUMNS = table_columns("neurons")


def _cells(model: Model, table: str) -> list[Site]:
    s = model.shape
    if table == "heads":
        return [Site("attn_head", layer, head=h) for layer in range(s.n_layers) for h in range(s.n_heads)]
    return [Site("mlp_post", layer, neuron=n) for layer in range(s.n_layers) for n in range(s.d_mlp)]


def _top(values: np.ndarray, k: int) -> np.ndarray:
    finite = np.where(np.isfinite(values), np.abs(values), -np.inf)
    order = np.argsort(-finite, kind="stable")[:k]
    mask = np.zeros(len(values), dtype=bool)
    mask[order] = True
    return mask & np.isfinite(values)


def agreement(reference: np.ndarray, other: np.ndarray, *, same_sign: bool) -> np.ndarray:
    """Per row: whether ``other`` puts the row in its top-k exactly when ``reference`` does
    (and, with ``same_sign``, with the same sign when both do). ``None`` where ``other`` is NaN."""
    n = len(reference)
    k = min(n, max(AGREE_K, int(np.ceil(0.05 * n))))
    in_ref, in_other = _top(reference, k), _top(other, k)
    agree = in_ref == in_other
    if same_sign:
        both = in_ref & in_other
        agree = agree & ~(both & (np.sign(reference) != np.sign(other)))
    out = np.array(agree, dtype=object)
    out[~np.isfinite(other)] = None
    return out


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def _method_columns(frame: pd.DataFrame, table: str, results: Mapping[str, Result], sites: list[Site]) -> None:
    for column in _columns(table):
        values = column.values(results, sites)
        if values is None:
            values = [column.missing] * len(frame)
        frame[column.name] = values if isinstance(values, np.ndarray) else list(values)


def _flags(frame: pd.DataFrame) -> None:
    n = len(frame)
    patch = _numeric(frame, "patch_effect")
    has_patch = bool(np.isfinite(patch).any())
    ref = patch if has_patch else _numeric(frame, "atp")
    for flag, (column, same_sign) in AGREEMENT.items():
        if not np.isfinite(ref).any() or (column == "atp" and not has_patch):
            frame[flag] = np.array([None] * n, dtype=object)
        else:
            frame[flag] = agreement(ref, _numeric(frame, column), same_sign=same_sign)
    flags = frame[list(AGREEMENT)]
    frame["agree"] = [all(bool(x) for x in row if x is not None) if any(x is not None for x in row) else None
                      for row in flags.itertuples(index=False)]
    score = np.where(np.isfinite(ref), np.abs(ref), -np.inf)
    order = np.argsort(-score, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    frame["rank"] = rank


def _table(model: Model, table: str, results: Mapping[str, Result]) -> pd.DataFrame:
    sites = _cells(model, table)
    inner = "head" if table == "heads" else "neuron"
    frame = pd.DataFrame({
        "component": [s.label for s in sites],
        "kind": inner,
        "layer": [s.layer for s in sites],
        inner: [getattr(s, inner) for s in sites],
    })
    _method_columns(frame, table, results, sites)
    _flags(frame)
    if "in_circuit" in frame.columns:  # True / False, or None where the circuit's granularity says nothing
        frame["in_circuit"] = frame["in_circuit"].astype(object).where(frame["in_circuit"].notna(), None)
    return frame[list(table_columns(table))].sort_values("rank", kind="stable").reset_index(drop=True)


def head_table(model: Model, results: Mapping[str, Result]) -> pd.DataFrame:
    """One row per attention head (see ``docs/report.md``), sorted by rank."""
    return _table(model, "heads", results)


def neuron_table(model: Model, results: Mapping[str, Result]) -> tuple[pd.DataFrame, int]:
    """One row per MLP neuron (the top :data:`MAX_NEURONS` by rank), and the total count."""
    frame = _table(model, "neurons", results)
    return frame.head(MAX_NEURONS).reset_index(drop=True), len(frame)
