"""The circuit diagram: a found circuit drawn as a layered graph.

Pure figure code over a :class:`~arithinterp.methods.circuits.CircuitResult`
(and optionally an
:class:`~arithinterp.methods.edge_attribution.EdgeAttributionResult` for edge
weights); it reads only their labeled values, so it imports neither method.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from arithinterp.models import Site
from arithinterp.results import Result

__all__ = ["circuit_figure"]


def _stage(kind: str, layer: int) -> int:
    """Forward-pass order: attention of layer L, then its MLP."""
    return 2 * layer + (0 if kind == "attn_head" else 1)


def _edge_node(label: str, *, receiving: bool = False) -> str:
    """The edge-graph node of a circuit member: a neuron is its MLP, a head receives through ``ATTN``."""
    site = Site.from_label(label)
    if site.kind == "mlp_post" or (site.kind == "attn_head" and receiving):
        return Site("mlp_out" if site.kind == "mlp_post" else "attn_out", site.layer).label
    return label


def _edge_scores(edges: Result, nodes: list[tuple[str, int, float, str]]) -> list[tuple[str, str, float]]:
    """Edges between circuit members (and into the logits) with their EAP score.

    A head receives through its layer's attention block (``ATTN{l}``), an MLP through
    ``MLP{l}``; a neuron's edges are its MLP's.
    """
    v = edges.values
    senders = {str(c) for c in v.coords["component"].values}
    receivers = {str(c) for c in v.coords["site"].values}
    out = []
    for u in nodes:
        sender = _edge_node(u[0])
        if sender not in senders:
            continue
        for w in nodes:
            if w[1] <= u[1]:
                continue
            receiver = _edge_node(w[0], receiving=True)
            if receiver in receivers:
                score = float(v.sel(component=sender, site=receiver))
                if np.isfinite(score):
                    out.append((u[0], w[0], score))
        if "logits" in receivers:
            score = float(v.sel(component=sender, site="logits"))
            if np.isfinite(score):
                out.append((u[0], "logits", score))
    return out


def circuit_figure(result: Result, edges: Result | None = None) -> go.Figure:
    """A :class:`~arithinterp.methods.circuits.CircuitResult` as a diagram: layers left to
    right (attention, then MLP, per layer), components as nodes sized by score.

    Without ``edges``, components of consecutive occupied stages are joined by edges
    weighted by the geometric mean of their scores. With ``edges`` (an
    :class:`~arithinterp.methods.edge_attribution.EdgeAttributionResult` of the same
    model), every edge from a member to a later member, and to a ``logits`` node,
    carries its edge-attribution score: width by ``|score|``, colour by sign, the
    score on hover and at the edge's midpoint.
    """
    v = result.values
    labels = [str(x) for x in v.coords["component"].values]
    member = {str(c) for c in result.circuit}
    nodes = []
    for i, label in enumerate(labels):
        if label not in member:
            continue
        kind, layer = str(v.coords["kind"].values[i]), int(v.coords["comp_layer"].values[i])
        nodes.append((label, _stage(kind, layer), float(v.values[i]), kind))
    stages = sorted({n[1] for n in nodes})
    by_stage = {s: [n for n in nodes if n[1] == s] for s in stages}
    pos = {}
    for s, group in by_stage.items():
        for j, n in enumerate(sorted(group)):
            pos[n[0]] = (s / 2.0, j - (len(group) - 1) / 2.0)
    top = max([n[2] for n in nodes] + [1e-12])
    fig = go.Figure()
    if edges is not None:
        scored = _edge_scores(edges, nodes)
        last = (max(stages) + 1) / 2.0 if stages else 0.0
        pos["logits"] = (max(last, (2 * int(edges.values.coords["site_layer"].values.max())) / 2.0), 0.0)
        biggest = max([abs(e[2]) for e in scored] + [1e-12])
        mid_x, mid_y, mid_text = [], [], []
        for a, b, score in scored:
            (x0, y0), (x1, y1) = pos[a], pos[b]
            color = "rgba(31,119,180,0.6)" if score >= 0 else "rgba(214,39,40,0.6)"
            fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False,
                                     line={"width": 1 + 8 * abs(score) / biggest, "color": color},
                                     hoverinfo="text", text=f"{a} → {b}: EAP {score:+.3f}"))
            mid_x.append((x0 + x1) / 2)
            mid_y.append((y0 + y1) / 2)
            mid_text.append(f"{score:+.2f}")
        fig.add_trace(go.Scatter(x=mid_x, y=mid_y, mode="text", text=mid_text, showlegend=False,
                                 hoverinfo="skip", textfont={"size": 10}))
        fig.add_trace(go.Scatter(x=[pos["logits"][0]], y=[0.0], mode="markers+text", text=["logits"],
                                 textposition="top center", showlegend=False,
                                 marker={"size": 14, "color": "#2ca02c", "symbol": "square"},
                                 hoverinfo="text"))
    else:
        for a, b in zip(stages, stages[1:]):
            for na in by_stage[a]:
                for nb in by_stage[b]:
                    w = float(np.sqrt(max(na[2], 0.0) * max(nb[2], 0.0))) / top
                    (x0, y0), (x1, y1) = pos[na[0]], pos[nb[0]]
                    fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False,
                                             line={"width": 1 + 6 * w, "color": "rgba(100,100,100,0.5)"},
                                             hoverinfo="text", text=f"{na[0]} → {nb[0]} ({w:.2f})"))
    fig.add_trace(go.Scatter(
        x=[pos[n[0]][0] for n in nodes], y=[pos[n[0]][1] for n in nodes], mode="markers+text",
        text=[n[0] for n in nodes], textposition="top center", showlegend=False,
        marker={"size": [12 + 28 * n[2] / top for n in nodes],
                "color": ["#1f77b4" if n[3] == "attn_head" else "#ff7f0e" for n in nodes]},
        hovertemplate="%{text}<br>score %{customdata:.3f}<extra></extra>",
        customdata=[n[2] for n in nodes],
    ))
    f = result.circuit_faithfulness
    fig.update_layout(title=f"circuit: {len(nodes)} components, faithfulness "
                            f"{'undefined' if f is None else f'{f:.3f}'}",
                      xaxis_title="layer (attention, then MLP at +0.5)", yaxis={"visible": False})
    return fig
