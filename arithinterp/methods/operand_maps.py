"""Operand maps: any feature drawn over the ``(a, b)`` operand grid, and what kind of feature it is.

Anthropic's addition case study (Lindsey et al., 2025, "On the Biology of a Large Language
Model") draws each feature's activation over the operand grid, and Nikankin et al. (2025,
"Arithmetic Without Algorithms") sort arithmetic neurons into a few *heuristics*. Three of them
are told apart by the grid's shape alone:

- **operand**: the feature depends on one operand (``a ends in 6``, ``b in 60–69``): stripes;
- **lookup table**: on the pair of last digits (``_6 + _9``): a lattice of points;
- **result**: on the result (``sum ≈ 95``, ``sum ends in 5``): anti-diagonal bands.

:func:`classify_operand_map` scores every candidate pattern of each kind by the correlation of
the feature with the pattern's indicator over the grid and keeps the best (the simpler kind
wins a near tie: operand, then result, then lookup). :func:`operand_maps` computes the feature
values: a neuron's activation, a head's write (its first principal component over the grid, or
a given direction), any site's projection on a given direction (a probe's), at the last prompt
position, on every ``(a, b)`` of the task's grid (a window of :data:`WINDOW` values per operand
when the domain is larger, recorded in ``meta.options["window"]``). Cells that are not problems
of the task (:func:`~arithinterp.methods.grid.valid_cells`: a zero divisor, a negative difference
on a task without negatives) are NaN in the maps and take no part in the classification.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from plotly.subplots import make_subplots

from arithinterp.errors import MethodError
from arithinterp.methods._common import make_meta
from arithinterp.methods.grid import (
    MAX_GRID_SIDE,
    grid_activations,
    operand_grid,
    operand_grid_spec,
    valid_cells,
)
from arithinterp.methods.registry import (
    MethodSpec,
    NotApplicable,
    Panel,
    ReportColumn,
    ReportView,
    RunContext,
    register,
)
from arithinterp.models import Model, Site
from arithinterp.results import Result
from arithinterp.tasks import TaskSpec

__all__ = ["OPERAND_CLASSES", "OperandClass", "OperandMapResult", "classify_operand_map", "operand_maps"]

OperandClass = Literal["operand", "result", "lookup", "unclassified"]
#: The classes, simplest first (a near tie goes to the earlier one).
OPERAND_CLASSES: tuple[str, ...] = ("operand", "result", "lookup", "unclassified")
#: Below this |correlation| with every candidate pattern a feature is ``unclassified``.
MIN_SCORE = 0.3
#: A simpler class wins when its score is within this of the best.
TIE = 0.05
#: Values per operand of the grid window drawn when the task's domain is larger.
WINDOW = 100
#: Features drawn by :meth:`OperandMapResult.plot` (all are in ``values`` and :meth:`~OperandMapResult.figure`).
PLOT_FEATURES = 12
_OPS = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%", "modadd": "+"}
_RESULT = {"add": "sum", "sub": "difference", "mul": "product", "floordiv": "quotient", "mod": "remainder"}


@dataclass(frozen=True)
class _Candidate:
    kind: str
    description: str
    score: float  # |correlation|
    sign: int


def _group_scores(f: np.ndarray, key: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of ``f`` with the indicator ``key == k`` for every ``k < n``, and its counts."""
    count = np.bincount(key, minlength=n).astype(float)
    total = np.bincount(key, weights=f, minlength=n)
    return _corr(f, total, count), count


def _corr(f: np.ndarray, total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """corr(f, indicator) from the indicator's sum of ``f`` and size: (mean_in - mean) sqrt(p/(1-p)) / std."""
    n, sd = len(f), f.std()
    p = count / n
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (total / count - f.mean()) * np.sqrt(p / (1 - p)) / sd
    return np.where((count > 0) & (count < n), r, 0.0)


def _best(r: np.ndarray) -> tuple[int, float]:
    i = int(np.argmax(np.abs(r)))
    return i, float(r[i])


def _operand_candidates(f, a, b) -> list[_Candidate]:
    out = []
    for name, x in (("a", a), ("b", b)):
        i, r = _best(_group_scores(f, x % 10, 10)[0])
        out.append(_Candidate("operand", f"{name} ends in {i}", abs(r), int(np.sign(r))))
        tens = x // 10 - (x // 10).min()
        if tens.max() > 0:
            i, r = _best(_group_scores(f, tens, int(tens.max()) + 1)[0])
            lo = (int(x.min()) // 10 + i) * 10
            out.append(_Candidate("operand", f"{name} in {lo}–{lo + 9}", abs(r), int(np.sign(r))))
    return out


def _result_candidates(f, result, word) -> list[_Candidate]:
    i, r = _best(_group_scores(f, result % 10, 10)[0])
    out = [_Candidate("result", f"{word} ends in {i}", abs(r), int(np.sign(r)))]
    shift = result - result.min()
    count = np.bincount(shift).astype(float)
    total = np.bincount(shift, weights=f)
    csum_c, csum_t = np.concatenate([[0], np.cumsum(count)]), np.concatenate([[0], np.cumsum(total)])
    centres = np.arange(len(count))
    for w in (0, 1, 2, 4, 8):
        lo, hi = np.clip(centres - w, 0, len(count)), np.clip(centres + w + 1, 0, len(count))
        rs = _corr(f, csum_t[hi] - csum_t[lo], csum_c[hi] - csum_c[lo])
        i, r = _best(rs)
        c = int(result.min()) + i
        text = f"{word} = {c}" if w == 0 else f"{word} ≈ {c} ({c - w}–{c + w})"
        out.append(_Candidate("result", text, abs(r), int(np.sign(r))))
    return out


def _lookup_candidates(f, a, b, op) -> list[_Candidate]:
    i, r = _best(_group_scores(f, (a % 10) * 10 + b % 10, 100)[0])
    return [_Candidate("lookup", f"_{i // 10} {op} _{i % 10}", abs(r), int(np.sign(r)))]


def classify_operand_map(values: np.ndarray, a: np.ndarray, b: np.ndarray, result: np.ndarray, *,
                         operation: str = "add") -> dict[str, Any]:
    """What kind of feature ``values`` is over an operand grid.

    Args:
        values: the feature, ``[len(a), len(b)]`` (rows: operand ``a``).
        a: the operand values of the rows.
        b: the operand values of the columns.
        result: the task's result of every cell, ``[len(a), len(b)]``.
        operation: the task's operation (names the result: ``sum``, ``product`` ...).

    Returns:
        ``{"kind": one of OPERAND_CLASSES, "description": "a ends in 6" | "_6 + _9" |
        "sum ≈ 95 (93–97)" ..., "score": |correlation| with that pattern, "sign": +1 when the
        feature is high on the pattern, -1 when it is low there}``.
    """
    z = np.asarray(values, dtype=float)
    aa, bb = (g.ravel() for g in np.meshgrid(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64),
                                             indexing="ij"))
    f, res = z.ravel(), np.asarray(result, dtype=np.int64).ravel()
    if f.shape != aa.shape or res.shape != aa.shape:
        raise MethodError(f"values {z.shape} and result {np.shape(result)} must be [len(a)={len(a)}, len(b)={len(b)}]")
    finite = np.isfinite(f)
    if finite.sum() < 4 or f[finite].std() < 1e-12:
        return {"kind": "unclassified", "description": "constant over the grid", "score": 0.0, "sign": 0}
    f, aa, bb, res = f[finite], aa[finite], bb[finite], res[finite]
    word = _RESULT.get(operation, "result")
    cands = (_operand_candidates(f, aa, bb) + _result_candidates(f, res, word)
             + _lookup_candidates(f, aa, bb, _OPS.get(operation, "?")))
    top = max(c.score for c in cands)
    if top < MIN_SCORE:
        best = max(cands, key=lambda c: c.score)
        return {"kind": "unclassified", "description": f"closest: {best.description}", "score": best.score,
                "sign": best.sign}
    for kind in OPERAND_CLASSES:  # the simplest kind within TIE of the best
        near = [c for c in cands if c.kind == kind and c.score >= top - TIE]
        if near:
            best = max(near, key=lambda c: c.score)
            return {"kind": best.kind, "description": best.description, "score": best.score, "sign": best.sign}
    raise AssertionError("unreachable")


class OperandMapResult(Result):
    """Features over the operand grid, and their class.

    ``values``: dims ``(component, prompt)`` (``component``: feature labels, ``L0H1``,
    ``L1N17``, ``L1 mid``; ``prompt``: the grid's cells, ``a`` major, with coordinates
    ``operand_a`` and ``operand_b``; :meth:`grid` gives one feature as ``[a, b]``). Coordinates
    on ``component``: ``operand_class`` (one of :data:`OPERAND_CLASSES`), ``description``
    (``"a ends in 6"``), ``class_score`` (|correlation| with that pattern), ``reduction`` (how a
    vector became one number: ``neuron``, ``pc1``, ``direction``). ``meta.options``: the grid's ``operand_range``, the
    ``window`` flag, ``operation``, ``masked_cells`` (cells that are not problems of the task, NaN).
    """

    metric_name = "activation"

    def classes(self) -> dict[str, dict[str, Any]]:
        """``{feature: {"kind", "description", "score"}}``."""
        v = self.values
        return {str(f): {"kind": str(k), "description": str(d), "score": float(s)}
                for f, k, d, s in zip(v.coords["component"].values, v.coords["operand_class"].values,
                                      v.coords["description"].values, v.coords["class_score"].values)}

    def grid(self, feature: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values [a, b], a values, b values)`` of one feature."""
        v = self.values.sel(component=feature)
        a = np.unique(v.coords["operand_a"].values)
        b = np.unique(v.coords["operand_b"].values)
        return np.asarray(v.values, dtype=float).reshape(len(a), len(b)), a, b

    def figure(self, feature: str) -> go.Figure:
        """One feature's heatmap over the grid, titled with its class."""
        z, a, b = self.grid(feature)
        c = self.classes()[feature]
        fig = go.Figure(go.Heatmap(
            z=z, x=b, y=a, colorscale="RdBu_r", zmid=0 if np.nanmin(z) < 0 < np.nanmax(z) else None,
            hovertemplate="a %{y}, b %{x}<br>value %{z:.4g}<extra></extra>", colorbar={"thickness": 10},
        ))
        fig.update_layout(title={"text": f"{feature}: {c['kind']}: {c['description']} (r = {c['score']:.2f})",
                                 "font": {"size": 13}},
                          xaxis_title="operand_b", yaxis_title="operand_a", height=360,
                          margin={"l": 50, "r": 10, "t": 40, "b": 40})
        return fig

    def plot(self) -> go.Figure:
        v = self.values
        feats = [str(f) for f in v.coords["component"].values][:PLOT_FEATURES]
        cols = min(4, len(feats)) or 1
        rows = -(-len(feats) // cols) or 1
        classes = self.classes()
        titles = [f"{f}: {classes[f]['description']} ({classes[f]['kind']}, r={classes[f]['score']:.2f})"
                  for f in feats]
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.04,
                            vertical_spacing=0.12)
        for i, f in enumerate(feats):
            z, a, b = self.grid(f)
            scale = float(np.nanmax(np.abs(z))) or 1.0
            fig.add_trace(go.Heatmap(
                z=(z / scale).astype(np.float32), x=b, y=a, zmin=-1, zmax=1,  # float32: the page stays small
                colorscale="RdBu_r", coloraxis="coloraxis", name=f,
                hovertemplate=f"{f}<br>a %{{y}}, b %{{x}}<br>value / max|value| %{{z:.3f}}<extra></extra>",
            ), i // cols + 1, i % cols + 1)
        fig.update_layout(title="operand maps: each feature over the (a, b) grid, scaled to its max |value|",
                          coloraxis={"colorscale": "RdBu_r", "cmin": -1, "cmax": 1},
                          height=max(340, 300 * rows))
        fig.update_annotations(font_size=11)
        return fig

    @classmethod
    def example(cls) -> OperandMapResult:
        a, b = (g.ravel() for g in np.meshgrid(np.arange(10), np.arange(10), indexing="ij"))
        z = np.stack([(a % 10 == 6).astype(float), (a + b == 9).astype(float)])
        values = xr.DataArray(z, dims=("component", "prompt"),
                              coords={"component": ["L0N0", "L0N1"], "prompt": np.arange(100),
                                      "operand_a": ("prompt", a), "operand_b": ("prompt", b),
                                      "operand_class": ("component", ["operand", "result"]),
                                      "description": ("component", ["a ends in 6", "sum = 9"]),
                                      "class_score": ("component", [1.0, 1.0]),
                                      "reduction": ("component", ["neuron", "neuron"])})
        return cls(values=values, meta=make_meta("operand_maps", None, options={"operation": "add"}))


# -- computing the features ---------------------------------------------------------------------


def _grid_spec(spec: TaskSpec) -> tuple[TaskSpec, bool]:
    """The task's operand grid, or a window of :data:`WINDOW` values per operand when it is larger."""
    if spec.operation not in _OPS:
        raise MethodError(f"operand maps need a two-operand task; {spec.operation!r} is not one")
    try:
        return operand_grid_spec(spec, max_side=MAX_GRID_SIDE), False
    except MethodError:
        if spec.few_shot or spec.operation == "modadd":
            raise
    lo = spec.min_operand
    return spec.model_copy(update={"operand_range": (lo, lo + WINDOW - 1)}), True


def _feature_site(feature: Site | str) -> Site:
    site = feature if isinstance(feature, Site) else Site.from_label(str(feature))
    return site if site.pos is not None else dataclasses.replace(site, pos=-1)


def _reduce(act: torch.Tensor, direction: Any, keep: np.ndarray) -> tuple[np.ndarray, str]:
    """One number per grid cell: the activation itself, its projection on ``direction``, or its first
    principal component over the problems of the task (``keep``; sign: the larger tail positive).
    Cells that are not problems of the task are NaN."""
    x = act.reshape(act.shape[0], act.shape[1], -1).numpy()
    if x.shape[-1] == 1:
        z, how = x[..., 0], "neuron"
    elif direction is not None:
        d = np.asarray(direction, dtype=float).ravel()
        if d.shape[0] != x.shape[-1]:
            raise MethodError(f"a direction of length {d.shape[0]} for an activation of width {x.shape[-1]}")
        z, how = x @ d, "direction"
    else:
        kept = x[keep]
        mean = kept.mean(0)
        _, _, vt = np.linalg.svd(kept - mean, full_matrices=False)
        z, how = (x - mean) @ vt[0], "pc1"
        if abs(z[keep].min()) > abs(z[keep].max()):
            z = -z
    return np.where(keep, z, np.nan), how


def operand_maps(
    model: Model,
    spec: TaskSpec,
    *,
    features: Sequence[str] | None = None,
    directions: Mapping[str, Any] | None = None,
    batch_size: int = 1024,
) -> OperandMapResult:
    """Features over the operand grid of ``spec``, each classified (:func:`classify_operand_map`).

    Args:
        model: the model.
        spec: a two-operand task; its operand grid (a window of :data:`WINDOW` values per operand
            from the smallest when the domain is larger than the grid methods sweep).
        features: component labels or sites (``"L0H1"``, ``"L1N17"``, ``"L1 mid"``), read at the
            last prompt position unless the site has a position; default: every attention head.
        directions: ``{feature: vector}``: project that feature's activation on the vector (a
            probe's weights on a residual site); other vector-valued features (a head's write,
            a residual site) are reduced to their first principal component over the grid.
        batch_size: prompts per forward pass.
    """
    if batch_size < 1:
        raise MethodError(f"batch_size must be >= 1, got {batch_size}")
    grid, window = _grid_spec(spec)
    if features is None:
        s = model.shape
        features = [Site("attn_head", layer, head=h).label for layer in range(s.n_layers) for h in range(s.n_heads)]
    labels = [f.label if isinstance(f, Site) else str(f) for f in features]
    if not labels:
        raise MethodError("features is empty; give component labels or sites ('L0H1', 'L1N17')")
    directions = dict(directions or {})
    unknown = sorted(set(directions) - set(labels))
    if unknown:
        raise MethodError(f"directions for {unknown}, which are not features {labels}")
    sites = [_feature_site(f) for f in features]
    model.validate(sites)
    acts = grid_activations(model, grid, list(dict.fromkeys(sites)), heads="write", batch_size=batch_size)
    a, b, result, _, _ = operand_grid(grid)
    side = int(round(np.sqrt(len(a))))
    keep = valid_cells(grid, a, b, result).reshape(side, side)
    a_vals, b_vals = a.reshape(side, side)[:, 0], b.reshape(side, side)[0]
    result = result.reshape(side, side)
    maps, reductions, classes = [], [], []
    for label, site in zip(labels, sites):
        z, how = _reduce(acts[site], directions.get(label), keep)
        maps.append(z)
        reductions.append(how)
        classes.append(classify_operand_map(z, a_vals, b_vals, result, operation=grid.operation))
    values = xr.DataArray(np.stack(maps).reshape(len(maps), -1), dims=("component", "prompt"), coords={
        "component": labels, "prompt": np.arange(len(a)), "operand_a": ("prompt", a), "operand_b": ("prompt", b),
        "operand_class": ("component", [c["kind"] for c in classes]),
        "description": ("component", [c["description"] for c in classes]),
        "class_score": ("component", [c["score"] for c in classes]),
        "reduction": ("component", reductions)})
    meta = make_meta("operand_maps", model, None, options={
        "features": labels, "directions": sorted(directions), "operation": grid.operation,
        "operand_range": list(grid.operand_range or (0, grid.p - 1)), "window": window,
        "masked_cells": int((~keep).sum()), "batch_size": batch_size})
    return OperandMapResult(values=values, meta=meta)


# -- registration ---------------------------------------------------------------------------------

#: Heads and neurons mapped in a report: the top ones by |patching| (else |AtP|).
REPORT_MAP_HEADS = 8
REPORT_MAP_NEURONS = 8


def _top_sites(ctx: RunContext, kind: str, k: int) -> list[str]:
    for name in (f"patching_{kind}", f"attribution_{kind}"):
        res = ctx.results.get(name)
        if res is None:
            continue
        v = res.effect if hasattr(res, "effect") else res.values
        inner = "head" if kind == "heads" else "neuron"
        v = v.transpose("layer", inner, ...)
        while v.ndim > 2:
            v = v.isel({v.dims[-1]: 0})
        flat = np.nan_to_num(np.abs(np.asarray(v.values, dtype=float)), nan=-1).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        n_inner = v.sizes[inner]
        make = (lambda layer, i: Site("attn_head", layer, head=i)) if kind == "heads" else \
            (lambda layer, i: Site("mlp_post", layer, neuron=i))
        return [make(int(v.coords["layer"].values[j // n_inner]), int(v.coords[inner].values[j % n_inner])).label
                for j in order]
    s = ctx.model.shape
    if kind == "heads":
        return [Site("attn_head", layer, head=h).label for layer in range(s.n_layers) for h in range(s.n_heads)][:k]
    return []


def _report_operand_maps(ctx: RunContext) -> dict:
    try:
        _grid_spec(ctx.spec)
    except MethodError as err:
        raise NotApplicable(str(err)) from err
    features = _top_sites(ctx, "heads", REPORT_MAP_HEADS) + _top_sites(ctx, "neurons", REPORT_MAP_NEURONS)
    return {"operand_maps": operand_maps(ctx.model, ctx.spec, features=features)}


def _read(field: str):
    def read(result: OperandMapResult, sites: list[Site]) -> list:
        classes = result.classes()
        out = []
        for s in sites:
            c = classes.get(s.label)
            out.append(None if c is None else (f"{c['kind']}: {c['description']}" if field == "text" else c["score"]))
        return out if field == "text" else np.array([np.nan if x is None else x for x in out], dtype=float)

    return read


def _panel(result: OperandMapResult, site: Site) -> Any:
    label = site.label
    if label not in result.classes():
        return (f"{label} has no operand map in this run (the report maps the top {REPORT_MAP_HEADS} heads and "
                f"{REPORT_MAP_NEURONS} neurons; arithinterp.methods.operand_maps draws any feature)")
    return result.figure(label)


register(MethodSpec(
    name="operand_maps", function=operand_maps, inputs="grid", result=OperandMapResult,
    report=ReportView(
        run=_report_operand_maps,
        results=("operand_maps",),
        columns=(*ReportColumn.pair("operand_feature", "operand_maps", "operand_maps", _read("text"),
                                    "the component over the operand grid: operand / result / lookup", missing=None),
                 *ReportColumn.pair("operand_score", "operand_maps", "operand_maps", _read("score"),
                                    "|correlation| of the map with that pattern")),
        figures={"operand_maps": "Operand maps (top heads and neurons over the (a, b) grid)"},
        order=85,
    ),
    panels=(Panel("operand_maps", "Operand map", _panel),),
))
