"""Default figures for results: pure functions of a tidy frame.

``frame_figure`` picks the plot from the shape of the data: one value is a
single bar, one varying dim a line (numeric labels) or bar chart (text
labels), two or more a heatmap over the two largest dims with the others
averaged (``prompt`` is always averaged first when other dims vary).
Columns named ``ci_low``/``ci_high`` become error bars when no
averaging happened. Nothing here touches global plotly state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["CI_HIGH", "CI_LOW", "frame_figure", "tick_labels"]

SAMPLE_DIM = "prompt"
CI_LOW = "ci_low"
CI_HIGH = "ci_high"


def tick_labels(
    frame: pd.DataFrame, dim: str, order: Sequence[object], skip: Sequence[str]
) -> list[str]:
    """Text for each label of ``dim``, enriched by a ``{dim}_*`` label column when one exists.

    A column such as ``pos_token`` that has one value per ``pos`` turns tick
    ``3`` into ``3 +``. Columns in ``skip`` (dims, metric, extras) are never used.
    """
    for col in frame.columns:
        if col in skip or not str(col).startswith(f"{dim}_"):
            continue
        per_label = frame.groupby(dim, sort=False)[col]
        if per_label.nunique(dropna=False).max() <= 1:
            mapping = per_label.first()
            return [f"{label} {mapping.get(label, '')}".rstrip() for label in order]
    return [str(label) for label in order]


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _error_bars(frame: pd.DataFrame, metric: str, grouped: bool) -> dict[str, object]:
    if grouped or CI_LOW not in frame or CI_HIGH not in frame:
        return {}
    centre = frame[metric].to_numpy(dtype=float)
    return {
        "error_y": {
            "type": "data",
            "symmetric": False,
            "array": frame[CI_HIGH].to_numpy(dtype=float) - centre,
            "arrayminus": centre - frame[CI_LOW].to_numpy(dtype=float),
        }
    }


def _one_dim(frame: pd.DataFrame, dim: str, metric: str, skip: Sequence[str]) -> go.Figure:
    grouped = frame[dim].duplicated().any()
    data = frame.groupby(dim, sort=False)[metric].mean().reset_index() if grouped else frame
    errors = _error_bars(frame, metric, grouped)
    hover = f"{dim}=%{{x}}<br>{metric}=%{{y:.4g}}<extra></extra>"
    if _is_numeric(data[dim]):
        trace: go.BaseTraceType = go.Scatter(
            x=data[dim],
            y=data[metric],
            mode="lines+markers",
            name=metric,
            hovertemplate=hover,
            **errors,
        )
        return go.Figure(trace)
    text = tick_labels(frame, dim, list(data[dim]), skip)
    trace = go.Bar(x=text, y=data[metric], name=metric, hovertemplate=hover, **errors)
    fig = go.Figure(trace)
    fig.update_xaxes(type="category")
    return fig


def _heatmap(frame: pd.DataFrame, y: str, x: str, metric: str, skip: Sequence[str]) -> go.Figure:
    y_order = list(pd.unique(frame[y]))
    x_order = list(pd.unique(frame[x]))
    grid = (
        frame.groupby([y, x], sort=False)[metric]
        .mean()
        .unstack(x)
        .reindex(index=y_order, columns=x_order)
    )
    z = grid.to_numpy(dtype=float)
    finite = z[np.isfinite(z)]
    diverging = finite.size > 0 and finite.min() < 0 < finite.max()
    colours = {"colorscale": "RdBu", "zmid": 0.0} if diverging else {"colorscale": "Viridis"}
    trace = go.Heatmap(
        z=z,
        x=tick_labels(frame, x, x_order, skip),
        y=tick_labels(frame, y, y_order, skip),
        colorbar={"title": {"text": metric}},
        hovertemplate=f"{y}=%{{y}}<br>{x}=%{{x}}<br>{metric}=%{{z:.4g}}<extra></extra>",
        **colours,
    )
    fig = go.Figure(trace)
    fig.update_xaxes(type="category")
    # Rows read top to bottom like a matrix (layer 0 at the top), as in most papers' plots.
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def frame_figure(
    frame: pd.DataFrame,
    *,
    dims: Sequence[str],
    metric: str,
    title: str,
    extras: Sequence[str] = (),
) -> go.Figure:
    """The default figure of a tidy result frame.

    ``dims`` are the frame's dim columns (in the array's order), ``metric`` its
    value column and ``extras`` the auxiliary columns (never used as labels).
    """
    dims = list(dims)
    skip = [*dims, metric, *extras]
    sizes = {d: int(frame[d].nunique(dropna=False)) for d in dims}
    varying = [d for d in dims if sizes[d] > 1]
    # Prompts are samples, not something to look along: average them away first.
    shown = [d for d in varying if d != SAMPLE_DIM] or varying
    if not varying:
        value = float(frame[metric].mean()) if len(frame) else float("nan")
        errors = _error_bars(frame, metric, grouped=len(frame) != 1)
        fig = go.Figure(go.Bar(x=[metric], y=[value], name=metric, **errors))
        fig.update_layout(title={"text": title}, yaxis_title=metric, showlegend=False)
        return fig
    if len(shown) == 1:
        (dim,) = shown
        fig = _one_dim(frame, dim, metric, skip)
        fig_dims: tuple[str, ...] = (dim,)
        fig.update_layout(xaxis_title=dim, yaxis_title=metric)
    else:
        largest = sorted(shown, key=lambda d: (-sizes[d], dims.index(d)))[:2]
        y, x = sorted(largest, key=dims.index)
        fig = _heatmap(frame, y, x, metric, skip)
        fig_dims = (x, y)
        fig.update_layout(xaxis_title=x, yaxis_title=y)
    averaged = [d for d in varying if d not in fig_dims]
    if averaged:
        title = f"{title} (mean over {', '.join(averaged)})"
    fig.update_layout(title={"text": title}, showlegend=False)
    return fig
