"""The Dash app: ``create_app(run_dir)`` and the callbacks, written as plain functions of the
loaded runs so they can be tested without a browser.

The browser only ever sends back run *names* (from the fixed list found when the app was
created) and component labels; both are checked against what was loaded, and no callback
or route reads a path the client supplies. Dash itself serves its component bundles and
favicon from the installed packages; this app adds no asset folder and no file route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import dash_table, dcc, html
from dash.exceptions import PreventUpdate

from arithinterp.dashboard.data import DashboardError, Report, RunSet, json_row, parse_component
from arithinterp.dashboard.evidence import Evidence, component_detail
from arithinterp.dashboard.figures import (
    empty_figure,
    fourier_figure,
    heads_grid,
    heatmap_figure,
    lens_figure,
    neuron_map_figure,
    neurons_grid,
    rank_diff,
)
from arithinterp.dashboard.hosts import refuse_foreign_hosts
from arithinterp.errors import ArithInterpError

__all__ = [
    "compare_view",
    "create_app",
    "detail_panel",
    "run_view",
    "select_component",
    "table_payload",
]

NO_COMPARE = "__none__"
_CARD = {"border": "1px solid #ddd", "borderRadius": "6px", "padding": "10px", "margin": "6px 0",
         "background": "white"}
_TABLE_STYLE = dict(
    style_table={"overflowX": "auto"},
    style_cell={"fontFamily": "monospace", "fontSize": "12px", "padding": "2px 6px",
                "maxWidth": "180px", "overflow": "hidden", "textOverflow": "ellipsis"},
    style_header={"fontWeight": "bold", "background": "#f3f3f3"},
)


# ---- the run: heatmaps, tables, circuit ---------------------------------------------------------


def table_payload(frame: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """DataTable ``(data, columns)``: rows keyed by component label (``id``), booleans as
    ``yes``/``no``, NaN as empty, numbers typed numeric so they sort and filter as numbers."""
    if frame.empty:
        return [], []
    columns = []
    for name in frame.columns:
        col = {"name": str(name), "id": str(name)}
        if pd.api.types.is_bool_dtype(frame[name]):
            col["type"] = "text"
        elif pd.api.types.is_numeric_dtype(frame[name]):
            col["type"] = "numeric"
            if pd.api.types.is_float_dtype(frame[name]):
                col["format"] = {"specifier": ".4g"}
        columns.append(col)
    data = []
    for row in frame.to_dict("records"):
        row = {k: ("yes" if v else "no") if isinstance(v, (bool, np.bool_)) else v
               for k, v in row.items()}
        out = json_row(row)
        out["id"] = str(row["component"])
        data.append(out)
    return data, columns


def _summary(report: Report) -> list:
    s = report.summary
    task = s.get("task") or {}
    task_text = ", ".join(f"{k}={v}" for k, v in task.items() if v is not None) if isinstance(
        task, dict) else str(task)
    items = [
        html.B(report.title), html.Br(),
        html.Span(f"task: {task_text}"), html.Br(),
        html.Span(f"methods: {', '.join(map(str, s.get('methods') or [])) or 'n/a'}"),
    ]
    for warning in s.get("warnings") or []:  # a model at chance level on the report's prompts
        items += [html.Br(), html.Span(f"warning: {warning}", style={"color": "#b00020"})]
    skipped = s.get("skipped") or {}
    if skipped:
        items += [html.Br(), html.Span("skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))]
    circuit = s.get("circuit")
    if isinstance(circuit, dict):
        f = circuit.get("faithfulness")
        items += [html.Br(), html.Span(
            f"circuit: {', '.join(map(str, circuit.get('components') or []))} — faithfulness "
            f"{'n/a' if f is None else f'{f:.3f}'} (target {circuit.get('target')})")]
    vs = s.get("attribution_vs_exact")
    if isinstance(vs, dict):  # how far the atp column can be trusted on this run
        from arithinterp.reports.page import attribution_text

        items += [html.Br(), html.Span(attribution_text(vs))]
    return items


def _heads_figure(report: Report):
    grid = heads_grid(report)
    if grid is None:
        return empty_figure("no head patching or head table in this run")
    z, title = grid
    return heatmap_figure(z, kind="head", title=title, report=report)


def _neurons_figure(report: Report):
    grid = neurons_grid(report)
    if grid is None:
        return empty_figure("no neuron table in this run")
    z, neurons, title = grid
    fig = heatmap_figure(z, kind="neuron", title=title, report=report, columns=neurons)
    fig.update_xaxes(nticks=24)
    return fig


def _circuit_figure(report: Report):
    res = report.result("circuit")
    if res is None:
        return empty_figure("no circuit in this run")
    from arithinterp.methods.circuits import circuit_figure

    fig = circuit_figure(res)
    fig.update_layout(height=320, margin={"l": 30, "r": 10, "t": 40, "b": 40},
                      title={"font": {"size": 13}})
    return fig


def run_view(runs: RunSet, key: Any) -> dict[str, Any]:
    """Everything that depends on the chosen run only."""
    report = runs.get(key)
    heads_data, heads_cols = table_payload(report.heads)
    neurons_data, neurons_cols = table_payload(report.neurons)
    return {
        "summary": _summary(report),
        "heads_figure": _heads_figure(report),
        "neurons_figure": _neurons_figure(report),
        "heads_data": heads_data, "heads_columns": heads_cols,
        "neurons_data": neurons_data, "neurons_columns": neurons_cols,
        "circuit_figure": _circuit_figure(report),
    }


# ---- selection ----------------------------------------------------------------------------------


def _label_from_click(click: Any) -> str | None:
    points = (click or {}).get("points") or []
    if not points:
        return None
    point = points[0]
    for key in ("customdata", "text"):
        value = point.get(key)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, str):
            try:
                return parse_component(value).label
            except DashboardError:
                continue
    return None


def select_component(trigger: str | None, events: dict[str, Any]) -> str:
    """The component a click or table cell selects: ``events`` maps the input id
    (``heads-graph``, ``neurons-graph``, ``circuit-graph``, ``heads-table``,
    ``neurons-table``) to its clickData / active_cell; ``trigger`` is the one that fired."""
    event = events.get(trigger) if trigger else None
    if trigger and trigger.endswith("-table"):
        row_id = (event or {}).get("row_id")
        if isinstance(row_id, str):
            return parse_component(row_id).label
        raise PreventUpdate
    label = _label_from_click(event)
    if label is None:
        raise PreventUpdate
    return label


# ---- the detail panel ---------------------------------------------------------------------------


def _missing(text: str) -> html.Div:
    return html.Div(f"Not available for this component: {text}", className="not-available",
                    style={"color": "#888", "fontStyle": "italic"})


def _section(title: str, sid: str, evidence: Evidence, render) -> html.Div:
    body = render(evidence.data) if evidence.available else _missing(evidence.reason)
    return html.Div([html.H4(title, style={"margin": "4px 0"}), body], id=sid, style=_CARD)


def _row_table(row: dict) -> html.Table:
    cells = [html.Tr([html.Td(k, style={"paddingRight": "12px", "color": "#555"}),
                      html.Td("n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))])
             for k, v in row.items()]
    return html.Table(html.Tbody(cells), style={"fontFamily": "monospace", "fontSize": "12px"})


def _records_table(rows: list[dict], tid: str) -> dash_table.DataTable:
    frame = pd.DataFrame.from_records(rows)
    columns = [{"name": c, "id": c, **({"type": "numeric", "format": {"specifier": ".4g"}}
                                       if pd.api.types.is_float_dtype(frame[c]) else {})}
               for c in frame.columns]
    return dash_table.DataTable(id=tid, data=[json_row(r) for r in rows], columns=columns,
                                sort_action="native", page_size=10, **_TABLE_STYLE)


def detail_panel(runs: RunSet, key: Any, label: Any) -> list:
    """The detail panel for component ``label`` of run ``key``."""
    if not label:
        return [html.Div("Click a heatmap cell or a table row to inspect a component.")]
    report = runs.get(key)
    try:
        comp = parse_component(label)
    except DashboardError as err:
        return [html.Div(str(err))]
    detail = component_detail(report, comp.label)
    graph = {"displayModeBar": False}
    return [
        html.H3(f"{comp.label} ({comp.kind}, layer {comp.layer})", id="detail-title",
                style={"margin": "4px 0"}),
        _section("Table row", "detail-row", detail["row"], _row_table),
        _section("Logit-lens trajectory", "detail-lens", detail["lens"],
                 lambda d: dcc.Graph(id="detail-lens-graph", figure=lens_figure(d, comp.label),
                                     config=graph)),
        _section("Probe evidence", "detail-probes", detail["probes"],
                 lambda d: html.Div([
                     html.Div(f"residual sites: reads {d['sites'].get('in', 'n/a')}, "
                              f"writes {d['sites'].get('out', 'n/a')}; best unmasked position per target "
                              "(masked: positions whose teacher-forced input already shows the digit)",
                              style={"fontSize": "12px"}),
                     _records_table(d["rows"], "detail-probes-table")])),
        _section("Fourier spectrum", "detail-fourier", detail["fourier"],
                 lambda d: dcc.Graph(id="detail-fourier-graph", figure=fourier_figure(d, comp.label),
                                     config=graph)),
        _section("K / KV map", "detail-neuron-map", detail["neuron_map"],
                 lambda d: dcc.Graph(id="detail-map-graph", figure=neuron_map_figure(d, comp.label),
                                     config=graph)),
        _section("Top-activating prompts", "detail-top-prompts", detail["top_prompts"],
                 lambda d: _records_table(d, "detail-top-table")),
        *[_section(title, f"detail-panel-{i}", evidence, lambda d, i=i: _panel_body(d, f"detail-panel-{i}"))
          for i, (title, evidence) in enumerate(detail["panels"].items())],
    ]


def _panel_body(shown: Any, pid: str):
    """A registered method's panel: a figure, or a table (DataFrame)."""
    if isinstance(shown, go.Figure):
        return dcc.Graph(id=f"{pid}-graph", figure=shown, config={"displayModeBar": False})
    return _records_table(shown.to_dict(orient="records"), f"{pid}-table")


# ---- comparing two runs -------------------------------------------------------------------------


def compare_view(runs: RunSet, key_a: Any, key_b: Any) -> list:
    """Side-by-side head heatmaps of two runs and the rank change of every head and neuron."""
    if key_b in (None, NO_COMPARE):
        return [html.Div("Choose a second run to compare." if len(runs.names) > 1 else
                         "Start the dashboard on a directory of runs to compare two of them.")]
    a, b = runs.get(key_a), runs.get(key_b)
    graphs = html.Div([
        html.Div(dcc.Graph(figure=_heads_figure(r).update_layout(title=r.title),
                           config={"displayModeBar": False}), style={"flex": "1", "minWidth": 0})
        for r in (a, b)
    ], style={"display": "flex", "gap": "8px"})
    out = [html.H3(f"{a.name} vs {b.name}"), graphs]
    for kind in ("head", "neuron"):
        diff = rank_diff(a, b, kind)
        if diff.empty:
            continue
        data, columns = table_payload(diff.rename(columns=lambda c: c.replace("_a", f" ({a.name})")
                                                  .replace("_b", f" ({b.name})")))
        out += [html.H4(f"{kind} ranks: {a.name} vs {b.name} (rank change = second - first)"),
                dash_table.DataTable(id=f"compare-{kind}-table", data=data, columns=columns,
                                     sort_action="native", filter_action="native", page_size=10,
                                     **_TABLE_STYLE)]
    return out


# ---- the app ------------------------------------------------------------------------------------


def _layout(runs: RunSet) -> html.Div:
    first = runs.reports[runs.names[0]]
    top = first.summary.get("top_components") or list(first.heads.get("component", []))[:1]
    graph = {"displayModeBar": False}

    def table(tid: str) -> dash_table.DataTable:
        return dash_table.DataTable(id=tid, data=[], columns=[], sort_action="native",
                                    filter_action="native", page_size=12, **_TABLE_STYLE)

    controls = html.Div([
        html.Label("run "), dcc.Dropdown(id="run", options=runs.names, value=runs.names[0],
                                         clearable=False, style={"width": "260px"}),
        html.Label("compare with ", style={"marginLeft": "16px"}),
        dcc.Dropdown(id="compare", options=[{"label": "(none)", "value": NO_COMPARE}]
                     + [{"label": n, "value": n} for n in runs.names],
                     value=NO_COMPARE, clearable=False, style={"width": "260px"},
                     disabled=len(runs.names) < 2),
    ], style={"display": "flex", "alignItems": "center", "gap": "6px"})
    left = html.Div([
        html.Div(id="summary", style=_CARD),
        html.Div(dcc.Graph(id="heads-graph", config=graph), style=_CARD),
        html.Div(dcc.Graph(id="neurons-graph", config=graph), style=_CARD),
        html.Div([html.H4("Heads", style={"margin": "4px 0"}), table("heads-table")], style=_CARD),
        html.Div([html.H4("Neurons", style={"margin": "4px 0"}), table("neurons-table")], style=_CARD),
        html.Div(dcc.Graph(id="circuit-graph", config=graph), style=_CARD),
    ], style={"flex": "3", "minWidth": 0})
    right = html.Div(id="detail", style={"flex": "2", "minWidth": 0})
    return html.Div([
        html.H2("arithinterp dashboard", style={"margin": "4px 0"}),
        controls,
        dcc.Store(id="selected", data=top[0] if top else None),
        html.Div([left, right], style={"display": "flex", "gap": "12px"}),
        html.Div(id="compare-section", style=_CARD),
    ], style={"fontFamily": "sans-serif", "padding": "8px 16px", "background": "#fafafa"})


def create_app(run_dir: str | Path, *, hosts: tuple[str, ...] = ()) -> dash.Dash:
    """A Dash app over ``run_dir`` (a report directory, a run directory with ``report/`` inside,
    or a directory of runs). Every report is loaded and checked here, so a missing or malformed
    directory raises a ``DashboardError`` before any server starts. Requests must be addressed
    to this machine's loopback names or one of ``hosts`` (the ``Host`` header check)."""
    runs = RunSet(run_dir)
    app = dash.Dash(__name__, title="arithinterp dashboard", update_title=None,
                    serve_locally=True, assets_folder=str(Path(__file__).parent / "_no_assets"))
    refuse_foreign_hosts(app.server, hosts)
    app.layout = _layout(runs)
    outs = [("summary", "children"), ("heads-graph", "figure"), ("neurons-graph", "figure"),
            ("heads-table", "data"), ("heads-table", "columns"), ("neurons-table", "data"),
            ("neurons-table", "columns"), ("circuit-graph", "figure")]

    @app.callback([dash.Output(i, p) for i, p in outs], dash.Input("run", "value"))
    def _on_run(key):
        try:
            v = run_view(runs, key)
        except ArithInterpError:
            raise PreventUpdate from None
        return (v["summary"], v["heads_figure"], v["neurons_figure"], v["heads_data"],
                v["heads_columns"], v["neurons_data"], v["neurons_columns"], v["circuit_figure"])

    sources = [("heads-graph", "clickData"), ("neurons-graph", "clickData"),
               ("circuit-graph", "clickData"), ("heads-table", "active_cell"),
               ("neurons-table", "active_cell")]

    @app.callback(dash.Output("selected", "data"), [dash.Input(i, p) for i, p in sources],
                  prevent_initial_call=True)
    def _on_select(*events):
        try:
            return select_component(dash.ctx.triggered_id,
                                    {i: e for (i, _), e in zip(sources, events)})
        except DashboardError:
            raise PreventUpdate from None

    @app.callback(dash.Output("detail", "children"), dash.Input("selected", "data"),
                  dash.Input("run", "value"))
    def _on_detail(label, key):
        try:
            return detail_panel(runs, key, label)
        except ArithInterpError as err:
            return [html.Div(f"error: {err}")]

    @app.callback(dash.Output("compare-section", "children"), dash.Input("run", "value"),
                  dash.Input("compare", "value"))
    def _on_compare(key, other):
        try:
            return compare_view(runs, key, other)
        except ArithInterpError as err:
            return [html.Div(f"error: {err}")]

    return app
