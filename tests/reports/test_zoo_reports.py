"""build_report on every zoo model, default task and n: complete tables, what is known about each model.

Slow (about 2-3 minutes on one thread of a loaded 2-core CPU, all five models; per-model
times in docs/report.md). Each model's report is built once, saved and loaded back.
Known answers per model:

* add-5d: the circuit is made of the components the per-answer-digit circuit benchmark
  (benchmarks/zoo_circuits.py, docs/report.md) finds: every digit needs MLP0, MLP1 and L0H1;
  nothing outside the union of the per-digit circuits.
* add-5d-1L: its one MLP and the operand-reading head L0H1 form the circuit.
* modadd-113: the report's Fourier evidence is that of ``key_frequencies`` on the same model
  (so these checks hold for any grokked modadd model): neurons clustered at a frequency carry
  one of the model's key frequencies, the top-ranked neurons are such Fourier neurons, and the
  head table carries key frequencies too.
* add-2d-tok: every last-layer neuron has a heuristic score, and the heuristic column is the
  classification's own (score >= 0.6 exactly where a heuristic is named).
* mul-3d: 1.2% exact-match accuracy, yet the report runs; its circuit's faithfulness is the
  NL score (correct logit / max logit, averaged over the teacher-forced answer tokens), which
  measures how much of the model's own per-token preference the circuit keeps, not correctness.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arithinterp.methods import key_frequencies
from arithinterp.methods.grid import MAX_GRID_SIDE
from arithinterp.methods.mediation import MEDIATION_NEURONS
from arithinterp.models import Site, load_model
from arithinterp.reports import AttributionReport, build_report

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_intra_op_thread")]

ZOO = ("add-5d", "add-5d-1L", "mul-3d", "modadd-113", "add-2d-tok")
#: Models whose operands take more than MAX_GRID_SIDE values: no operand grid.
NO_GRID = {"add-5d", "add-5d-1L", "mul-3d"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = {}
    root = tmp_path_factory.mktemp("zoo_reports")
    for name in ZOO:
        report = build_report(f"zoo:{name}", progress=False)
        folder = report.save(root / name)
        out[name] = (report, folder)
    return out


@pytest.mark.parametrize("name", ZOO)
def test_every_method_ran_or_was_skipped_for_a_true_reason(reports, name):
    report, _ = reports[name]
    s = report.summary
    grid = ["fourier", "heuristics"]
    if name in NO_GRID:
        assert s["methods"] == ["patching", "attribution", "mediation", "dla", "probes", "causal_variables",
                                "logit_lens", "operand_maps", "circuit", "attention"]
        # Operand maps draw a 100 x 100 window of the operands instead.
        assert report.results["operand_maps"].meta.options["window"] is True
        assert set(s["skipped"]) == set(grid)
        side = 900 if name == "mul-3d" else 90000
        for m in grid:
            assert f"take {side} values each (more than {MAX_GRID_SIDE})" in s["skipped"][m]
    elif name == "add-2d-tok":
        # number-level tokens: an intervened carry gives answers (199) past the vocabulary's last number
        assert set(s["skipped"]) == {"causal_variables"}
        assert "cannot represent" in s["skipped"]["causal_variables"]
        assert len(s["methods"]) == 11
    else:
        assert s["skipped"] == {}
        assert len(s["methods"]) == 12
    assert set(s["timings_s"]) == set(s["methods"]) | set(s["skipped"])
    assert s["n_prompts"] == 64 and s["n_pairs"] == 64


@pytest.mark.parametrize("name", ZOO)
def test_tables_are_complete_and_ranked(reports, name):
    report, _ = reports[name]
    model = load_model(f"zoo:{name}")
    shape = model.shape
    heads, neurons = report.heads, report.neurons
    assert len(heads) == shape.n_layers * shape.n_heads
    assert len(neurons) == shape.n_layers * shape.d_mlp == report.summary["n_neurons"]
    for frame in (heads, neurons):
        # Every method that ran fills its column for every row.
        for col in ("patch_effect", "patch_ci_low", "patch_ci_high", "atp", "dla", "probe_best"):
            assert frame[col].notna().all(), (name, col)
        assert (frame["patch_ci_low"] <= frame["patch_effect"] + 1e-12).all()
        assert (frame["patch_effect"] <= frame["patch_ci_high"] + 1e-12).all()
        # Rank 1..N, ordered by |patch effect|.
        assert frame["rank"].tolist() == list(range(1, len(frame) + 1))
        assert (np.diff(frame["patch_effect"].abs().to_numpy()) <= 1e-12).all()
        grid_cols = frame[["fourier_key_freq", "fourier_explained"]]
        assert grid_cols.isna().all().all() if name in NO_GRID else grid_cols.notna().all().all()
    assert heads["mediation_ie"].notna().all()
    assert neurons["mediation_ie"].notna().sum() == shape.n_layers * min(MEDIATION_NEURONS, shape.d_mlp)
    # The circuit: what the tables mark is what the summary lists, and "reached" is true.
    c = report.summary["circuit"]
    assert c["components"] == list(report.circuit.circuit)
    assert c["reached"] == (c["faithfulness"] >= c["target"])
    members = set(c["components"])
    assert set(heads.loc[heads["in_circuit"] == True, "component"]) == {x for x in members if "H" in x}  # noqa: E712
    # Whole MLPs say nothing about single neurons: those are not marked.
    assert "neurons" not in c["granularity"] and neurons["in_circuit"].isna().all()
    # Ablating the circuit alone hurts (completeness), the circuit alone is faithful.
    assert c["circuit_ablated_score"] < c["full_score"] - 0.3


@pytest.mark.parametrize("name", ZOO)
def test_report_directory_round_trip(reports, name):
    report, folder = reports[name]
    html = (folder / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 3 and "<script src=\"http" not in html
    assert '<script src="plotly.min.js"></script>' in html and (folder / "plotly.min.js").is_file()
    again = AttributionReport.load(folder)
    pd.testing.assert_frame_equal(again.heads, report.heads, check_dtype=False)
    pd.testing.assert_frame_equal(again.neurons, report.neurons, check_dtype=False)
    assert again.summary == report.summary
    assert again.circuit.circuit == report.circuit.circuit
    assert set(again.results) == set(report.results)
    assert again.top_prompts == report.top_prompts


def test_add_5d_circuit_is_the_per_digit_benchmarks(reports):
    report, _ = reports["add-5d"]
    c = report.summary["circuit"]
    # docs/report.md: every answer digit's circuit has L0H1, MLP0, MLP1; the union adds L0H2, L1H2.
    assert {"L0H1", "MLP0", "MLP1"} <= set(c["components"]) <= {"L0H1", "L0H2", "L1H2", "MLP0", "MLP1"}
    assert c["reached"] and c["faithfulness"] >= 0.9
    assert report.heads.iloc[0]["component"] == "L0H1"  # the operand-reading head ranks first
    assert report.summary["accuracy"] > 0.95


def test_add_5d_1l_circuit(reports):
    report, _ = reports["add-5d-1L"]
    c = report.summary["circuit"]
    assert {"L0H1", "MLP0"} <= set(c["components"]) and c["reached"]
    assert report.heads.iloc[0]["component"] == "L0H1"


def test_modadd_fourier_columns_are_the_models_key_frequencies(reports):
    report, _ = reports["modadd-113"]
    model = load_model("zoo:modadd-113")
    p = report.summary["task"]["p"]
    kf = key_frequencies(model, p=p)  # [a, b, "="] tokens built independently of the report's prompts
    res = report.results["key_frequencies"]
    np.testing.assert_allclose(res.values.values, kf.values.values, atol=1e-9)
    np.testing.assert_array_equal(res.extras["key_freq"].values, kf.extras["key_freq"].values)
    keys = set(kf.key_freqs)
    assert keys and kf.clustered_fraction > 0.1
    neurons, heads = report.neurons, report.heads
    clustered = neurons[neurons["fourier_explained"] >= kf.threshold]
    assert len(clustered) == int(kf.extras["clustered"].sum())
    assert clustered["fourier_key_freq"].astype(int).isin(keys).all()
    # The neurons that matter most are Fourier neurons at key frequencies.
    top = neurons.head(20)
    assert (top["fourier_explained"] >= kf.threshold).mean() >= 0.8
    assert top["fourier_key_freq"].astype(int).isin(keys).mean() >= 0.8
    # Head table: Fourier columns filled; head writes peak at key frequencies.
    assert heads["fourier_key_freq"].notna().all() and heads["fourier_explained"].between(0, 1).all()
    assert heads["fourier_key_freq"].astype(int).isin(keys).mean() >= 0.5
    assert heads["fourier_key_freq"].min() >= 1 and heads["fourier_key_freq"].max() <= p // 2


def test_add_2d_tok_heuristics_fill_the_last_layer(reports):
    report, _ = reports["add-2d-tok"]
    heur = report.results["heuristics"]
    last = int(heur.values.coords["layer"])
    neurons = report.neurons
    rows = neurons[neurons["layer"] == last]
    assert len(rows) == load_model("zoo:add-2d-tok").shape.d_mlp
    assert rows["heuristic_score"].between(0, 1).all()
    named = rows["heuristic"] != ""
    assert named.sum() >= 10  # measured 23 of 512 at t = 0.6
    assert (rows.loc[named, "heuristic_score"] >= 0.6).all() and (rows.loc[~named, "heuristic_score"] < 0.6).all()
    for _, r in rows[named].head(5).iterrows():
        assert r["heuristic"] == heur.neuron_heuristics(int(r["neuron"]))[0]
    # add-2d-tok's circuit (docs/report.md): its MLP and operand-reading heads.
    c = report.summary["circuit"]
    assert "MLP0" in c["components"] and c["reached"]
    assert Site("mlp_out", 0).label == "MLP0"


def test_mul_3d_report_runs_at_low_accuracy(reports):
    report, folder = reports["mul-3d"]
    s = report.summary
    assert s["accuracy"] < 0.1  # exact match 1.2% on the full test set
    # Per answer token the model is mostly right (teacher-forced), so the NL score of the full
    # model is high and the circuit's faithfulness is measured against it.
    assert np.mean(s["accuracy_per_digit"]) > 0.5
    c = s["circuit"]
    assert c["metric"] == "nl" and c["reached"] and c["full_score"] > 0.9
    assert {"MLP0", "MLP1"} <= set(c["components"])
    assert "Low accuracy" in (folder / "report.html").read_text()
