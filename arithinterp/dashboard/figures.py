"""Plotly figures of the dashboard: the patching heatmaps, the detail-panel plots and the
run comparison. Pure functions of a :class:`Report` or of :class:`Evidence` data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from arithinterp.dashboard.data import Report
from arithinterp.models.site import Site

__all__ = [
    "HEAD_METRICS",
    "empty_figure",
    "fourier_figure",
    "heads_grid",
    "heatmap_figure",
    "lens_figure",
    "neuron_map_figure",
    "neurons_grid",
    "rank_diff",
]

#: Table columns a heatmap can show, in order of preference.
HEAD_METRICS = ("patch_effect", "atp", "mediation_ie", "dla")


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, height=220,
                      margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig


def _metric_column(frame: pd.DataFrame) -> str | None:
    for name in HEAD_METRICS:
        if name in frame.columns and pd.to_numeric(frame[name], errors="coerce").notna().any():
            return name
    return None


def heads_grid(report: Report) -> tuple[np.ndarray, str] | None:
    """``[layer, head]`` patching effects (``results/patching_heads``, mean over positions),
    or the head table's best metric column when the run has no head patching."""
    res = report.result("patching_heads")
    if res is not None and {"layer", "head"} <= set(res.dims):
        v = res.values
        other = [d for d in v.dims if d not in ("layer", "head")]
        if other:
            v = v.mean(other)
        v = v.transpose("layer", "head")
        n_layers = int(v.coords["layer"].values.max()) + 1
        n_heads = int(v.coords["head"].values.max()) + 1
        z = np.full((n_layers, n_heads), np.nan)
        for i, layer in enumerate(v.coords["layer"].values):
            for j, head in enumerate(v.coords["head"].values):
                z[int(layer), int(head)] = float(v.values[i, j])
        metric = res.meta.options.get("metric", "effect")
        suffix = " (mean over positions)" if other else ""
        return z, f"activation patching of heads: {metric}{suffix}"
    return _grid_from_table(report.heads, "head", "head table")


def neurons_grid(report: Report) -> tuple[np.ndarray, list[int], str] | None:
    """``[layer, neuron]`` values from the neuron table (its best metric column); the
    columns are the neurons the table holds (large models keep only the top ones)."""
    frame = report.neurons
    if frame.empty or not {"layer", "neuron"} <= set(frame.columns):
        return None
    out = _grid_from_table(frame, "neuron", "neuron table", compact=True)
    if out is None:
        return None
    z, title = out
    neurons = sorted({int(n) for n in frame["neuron"]})
    return z, neurons, title


def _grid_from_table(frame: pd.DataFrame, index: str, what: str, compact: bool = False):
    if frame.empty or not {"layer", index} <= set(frame.columns):
        return None
    metric = _metric_column(frame)
    if metric is None:
        return None
    layers = frame["layer"].astype(int)
    idx = frame[index].astype(int)
    cols = sorted(set(idx)) if compact else list(range(int(idx.max()) + 1))
    where = {c: j for j, c in enumerate(cols)}
    z = np.full((int(layers.max()) + 1, len(cols)), np.nan)
    for layer, i, value in zip(layers, idx, pd.to_numeric(frame[metric], errors="coerce")):
        z[layer, where[i]] = value
    return z, f"{metric} ({what})"


def heatmap_figure(z: np.ndarray, *, kind: str, title: str, report: Report,
                   columns: list[int] | None = None) -> go.Figure:
    """A layer × head (or layer × neuron) heatmap whose cells carry their component label
    (``customdata``) and table row in the hover text; clicking a cell selects it."""
    columns = list(range(z.shape[1])) if columns is None else columns
    labels = [[(Site("attn_head", layer, head=c) if kind == "head" else Site("mlp_post", layer, neuron=c)).label
               for c in columns] for layer in range(z.shape[0])]
    table = report.table(kind)
    rows = {}
    if not table.empty:
        rows = {str(r["component"]): r for r in table.to_dict("records")}
    hover = []
    for line in labels:
        hover_line = []
        for label in line:
            r = rows.get(label, {})
            parts = [f"{k} {_fmt(r.get(k))}" for k in ("rank", "patch_ci_low", "patch_ci_high",
                                                         "atp", "dla", "in_circuit") if k in r]
            hover_line.append("<br>".join(parts))
        hover.append(hover_line)
    finite = z[np.isfinite(z)]
    limit = float(np.abs(finite).max()) if finite.size else 1.0
    fig = go.Figure(go.Heatmap(
        z=np.where(np.isfinite(z), z, None), x=[str(c) for c in columns],
        y=[f"L{layer}" for layer in range(z.shape[0])],
        customdata=np.array(labels, dtype=object), text=np.array(hover, dtype=object),
        colorscale="RdBu", zmid=0, zmin=-(limit or 1.0), zmax=limit or 1.0,
        hovertemplate="<b>%{customdata}</b><br>value %{z:.4f}<br>%{text}<extra></extra>",
        xgap=1, ygap=1, colorbar={"thickness": 12},
    ))
    fig.update_layout(
        title={"text": title, "font": {"size": 13}}, height=120 + 40 * z.shape[0],
        xaxis={"title": kind, "type": "category"},
        yaxis={"title": "layer", "autorange": "reversed", "type": "category"},
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
    )
    return fig


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.4g}"
    return str(value)


# ---- detail panel -------------------------------------------------------------------------------


def lens_figure(data: dict, label: str) -> go.Figure:
    fig = go.Figure()
    for s in data["series"]:
        fig.add_trace(go.Scatter(x=data["depth_labels"], y=s["prob"], mode="lines+markers",
                                 name=f"pos {s['pos']} → {s['token']}"))
    before, after = data["before"], data["after"]
    fig.add_vrect(x0=before, x1=after, fillcolor="orange", opacity=0.15, line_width=0,
                  annotation_text=f"{label} writes here", annotation_position="top left")
    fig.update_layout(title={"text": "logit lens: P(answer token) by depth (mean over prompts)",
                             "font": {"size": 13}},
                      yaxis={"title": "probability", "range": [0, 1]}, xaxis={"title": "depth"},
                      height=280, margin={"l": 50, "r": 10, "t": 40, "b": 40})
    return fig


def fourier_figure(data: dict, label: str) -> go.Figure:
    if data["kind"] == "spectrum":
        fig = go.Figure(go.Bar(x=data["freq"], y=data["value"]))
        fig.update_layout(title={"text": f"Fourier spectrum of {label}", "font": {"size": 13}},
                          xaxis={"title": "frequency", "type": "category"},
                          yaxis={"title": data["metric"]})
    else:
        counts = data.get("freq_counts") or {}
        mine = str(data.get("key_freq"))
        freqs = sorted(set(counts) | {mine}, key=int) if "key_freq" in data else sorted(counts, key=int)
        colors = ["#d62728" if f == mine else "#1f77b4" for f in freqs]
        fig = go.Figure(go.Bar(x=freqs, y=[counts.get(f, 0) for f in freqs], marker_color=colors))
        fig.update_layout(
            title={"text": f"{label}: key frequency k = {data.get('key_freq')} explains "
                           f"{data['explained']:.1%} of its variance (red); bars: units per key k",
                   "font": {"size": 13}},
            xaxis={"title": "key frequency k", "type": "category"},
            yaxis={"title": "units with this key k"})
    fig.update_layout(height=260, margin={"l": 50, "r": 10, "t": 40, "b": 40})
    return fig


def neuron_map_figure(data: dict, label: str) -> go.Figure:
    kinds = [k for k in ("k", "kv") if k in data]
    titles = {"k": "K map (activation)", "kv": "KV map (× vote for the result)"}
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[titles[k] for k in kinds])
    for i, kind in enumerate(kinds, start=1):
        fig.add_trace(go.Heatmap(
            z=data[kind], x=data["operand_b"], y=data["operand_a"], colorscale="Viridis",
            showscale=False, hovertemplate="a %{y}, b %{x}<br>%{z:.3f}<extra></extra>",
        ), 1, i)
        fig.update_xaxes(title_text="operand_b", row=1, col=i)
        fig.update_yaxes(title_text="operand_a", row=1, col=i)
    fig.update_layout(title={"text": f"{label}: neuron maps over the operand grid",
                             "font": {"size": 13}},
                      height=330, margin={"l": 50, "r": 10, "t": 60, "b": 40})
    return fig


# ---- comparing two runs -------------------------------------------------------------------------


def rank_diff(a: Report, b: Report, kind: str) -> pd.DataFrame:
    """Components of ``kind`` in either run with their rank and main metric in each, and the
    rank change (``rank_b - rank_a``); components in both runs first, by rank in ``a``."""
    cols = ["component", "rank", "patch_effect", "atp", "in_circuit"]
    frames = []
    for report, suffix in ((a, "a"), (b, "b")):
        table = report.table(kind)
        if table.empty:
            table = pd.DataFrame(columns=["component"])
        keep = table[[c for c in cols if c in table.columns]].copy()
        frames.append(keep.rename(columns={c: f"{c}_{suffix}" for c in keep.columns
                                           if c != "component"}))
    merged = frames[0].merge(frames[1], on="component", how="outer")
    if "rank_a" in merged and "rank_b" in merged:
        merged["rank_change"] = pd.to_numeric(merged["rank_b"]) - pd.to_numeric(merged["rank_a"])
        merged["_both"] = merged["rank_a"].notna() & merged["rank_b"].notna()
        merged = merged.sort_values(["_both", "rank_a", "rank_b"], ascending=[False, True, True],
                                    na_position="last").drop(columns="_both")
    return merged.reset_index(drop=True)
