"""The dashboard's callbacks as plain functions, the app's construction and the CLI command."""

from __future__ import annotations

import dash
import numpy as np
import pandas as pd
import pytest
from dash.exceptions import PreventUpdate
from typer.testing import CliRunner

from arithinterp.dashboard import create_app
from arithinterp.dashboard.app import compare_view, detail_panel, run_view, select_component
from arithinterp.dashboard.data import DashboardError, RunSet
from arithinterp.pipeline.cli import app as cli
from arithinterp.results import Result


@pytest.fixture(scope="module")
def runs(runs_dir) -> RunSet:
    return RunSet(runs_dir)


def _find(node, cid):
    """The component with id ``cid`` in a Dash component tree (or list of them)."""
    if isinstance(node, (list, tuple)):
        for child in node:
            hit = _find(child, cid)
            if hit is not None:
                return hit
        return None
    if getattr(node, "id", None) == cid:
        return node
    return _find(getattr(node, "children", None), cid) if hasattr(node, "children") else None


def _text(node) -> str:
    if isinstance(node, (list, tuple)):
        return " ".join(_text(c) for c in node)
    if isinstance(node, str):
        return node
    return _text(getattr(node, "children", None) or [])


def test_heads_heatmap_is_the_patching_result_and_cells_carry_labels(runs, runs_dir):
    view = run_view(runs, "full")
    stored = Result.load(runs_dir / "full" / "report" / "results" / "patching_heads")
    trace = view["heads_figure"].data[0]
    np.testing.assert_array_equal(np.asarray(trace.z, dtype=float),
                                  stored.values.transpose("layer", "head").values)
    assert trace.customdata.tolist() == [["L0H0", "L0H1", "L0H2", "L0H3"]]
    best = runs.get("full").heads.set_index("rank").loc[1]
    assert trace.text[0][int(best["head"])].startswith("rank 1<br>")  # hover shows the table row
    ids = [row["id"] for row in view["heads_data"]]
    assert ids == list(pd.read_parquet(runs_dir / "full" / "report" / "heads.parquet")["component"])
    numeric = {c["id"] for c in view["heads_columns"] if c.get("type") == "numeric"}
    assert {"rank", "patch_effect", "layer", "head"} <= numeric  # sorts/filters as numbers
    circuit = Result.load(runs_dir / "full" / "report" / "results" / "circuit")
    assert sorted(view["circuit_figure"].data[-1].text) == sorted(circuit.circuit)


def test_the_summary_card_says_how_far_attribution_agrees_with_exact_patching(runs):
    text = _text(run_view(runs, "full")["summary"])
    assert "against exact patching on these pairs: heads: Spearman 0.95, Pearson 0.97, top-10 overlap 0.90" in text
    assert "trust patch_effect" in text and "not rank" not in text


def test_neuron_heatmap_holds_every_table_neuron(runs):
    view = run_view(runs, "full")
    trace = view["neurons_figure"].data[0]
    table = runs.get("full").neurons.set_index("component")
    z = np.asarray(trace.z, dtype=float)
    for label in ("L0N0", "L0N271", "L0N511"):
        assert z[0, int(label[3:])] == table.loc[label, "patch_effect"]
        assert trace.customdata[0][int(label[3:])] == label


@pytest.mark.parametrize(("trigger", "event", "label"), [
    ("heads-graph", {"points": [{"x": "1", "y": "L0", "customdata": "L0H1"}]}, "L0H1"),
    ("neurons-graph", {"points": [{"customdata": "L0N17"}]}, "L0N17"),
    ("circuit-graph", {"points": [{"text": "MLP0", "customdata": 0.9}]}, "MLP0"),
    ("heads-table", {"row": 0, "column": 1, "row_id": "L0H3"}, "L0H3"),
])
def test_select_component_from_clicks_and_table_cells(trigger, event, label):
    assert select_component(trigger, {trigger: event}) == label


def test_select_component_ignores_empty_and_refuses_foreign_ids():
    for trigger, event in (("heads-graph", None), ("heads-graph", {"points": [{"text": "x"}]}),
                           ("heads-table", {"row": 0}), (None, {})):
        with pytest.raises(PreventUpdate):
            select_component(trigger, {trigger: event})
    with pytest.raises(DashboardError):
        select_component("heads-table", {"heads-table": {"row_id": "../../etc/passwd"}})


def test_detail_panel_shows_the_stored_evidence(runs, runs_dir):
    panel = detail_panel(runs, "full", "L0N3")
    assert _text(_find(panel, "detail-title")).startswith("L0N3")
    lens = Result.load(runs_dir / "full" / "report" / "results" / "logit_lens")
    answer = int(np.flatnonzero(lens.values.coords["is_answer"])[0])
    graph = _find(panel, "detail-lens-graph")
    np.testing.assert_array_equal(graph.figure.data[0].y, lens.values.mean("prompt").isel(pos=answer).values)
    maps = Result.load(runs_dir / "full" / "report" / "results" / "neuron_maps")
    kmap = _find(panel, "detail-map-graph").figure.data[0]
    np.testing.assert_array_equal(np.asarray(kmap.z, dtype=float), maps.grid(3).values)
    top = _find(panel, "detail-top-table").data
    assert top == runs.get("full").top_prompts["L0N3"]
    row = _text(_find(panel, "detail-row"))
    assert "L0N3" in row and "patch_effect" in row
    head = detail_panel(runs, "full", "L0H1")
    assert "Not available for this component" in _text(_find(head, "detail-neuron-map"))


def test_detail_panel_without_a_selection_and_for_unknown_runs(runs):
    assert "Click a heatmap cell" in _text(detail_panel(runs, "full", None))
    with pytest.raises(DashboardError):
        detail_panel(runs, "../full", "L0H0")


def test_compare_view_diffs_the_ranks_of_two_runs(runs):
    out = compare_view(runs, "full", "small")
    table = _find(out, "compare-head-table")
    a = runs.get("full").heads.set_index("component")["rank"]
    b = runs.get("small").heads.set_index("component")["rank"]
    for row in table.data:
        label = row["component"]
        assert row["rank (full)"] == a[label] and row["rank (small)"] == b[label]
        assert row["rank_change"] == b[label] - a[label]
    assert len(_find(out, "compare-neuron-table").data) == 512
    assert "Choose a second run" in _text(compare_view(runs, "full", None))


def test_create_app_builds_a_dash_app_and_refuses_bad_dirs(runs_dir, tmp_path):
    app = create_app(runs_dir)
    assert isinstance(app, dash.Dash)
    assert app.layout is not None
    with pytest.raises(DashboardError):
        create_app(tmp_path / "nothing")


def test_cli_binds_localhost_by_default_and_reports_bad_dirs(runs_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: calls.append(kw))
    runner = CliRunner()
    ok = runner.invoke(cli, ["dashboard", str(runs_dir / "full")])
    assert ok.exit_code == 0, ok.output
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8050
    runner.invoke(cli, ["dashboard", str(runs_dir), "--host", "0.0.0.0", "--port", "9001"])
    assert calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 9001
    bad = runner.invoke(cli, ["dashboard", str(tmp_path / "missing")])
    assert bad.exit_code == 2
    assert "does not exist" in bad.output
    assert len(calls) == 2
