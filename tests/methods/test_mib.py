"""MIB circuit scoring: the integration against MIB's loop, each curve point against the public
faithfulness function, and a planted ranking against a wrong one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arithinterp.errors import MethodError
from arithinterp.methods.faithfulness import faithfulness
from arithinterp.methods.mib import (
    MIB_FRACTIONS,
    MIB_RECEIVERS,
    MIBCurveResult,
    area_under_curve,
    curve_points,
    export_mib_graph,
    mib_curve,
    mib_edge_count,
    to_mib_graph,
)
from arithinterp.models import Site
from arithinterp.planted import planted

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _mib_loop(percentages, faithfulnesses, log_scale=False):
    """MIB_circuit_track/evaluation.py::evaluate_area_under_curve's integration, written out."""
    area_under, area_from_1 = 0.0, 0.0
    for i in range(len(faithfulnesses) - 1):
        x_1, x_2 = percentages[i], percentages[i + 1]
        if log_scale:
            x_1, x_2 = math.log(x_1), math.log(x_2)
        area_from_1 += (x_2 - x_1) * ((abs(1.0 - faithfulnesses[i]) + abs(1.0 - faithfulnesses[i + 1])) / 2)
        area_under += (x_2 - x_1) * ((faithfulnesses[i] + faithfulnesses[i + 1]) / 2)
    return area_under, area_from_1


def test_area_under_curve_is_mibs_integration():
    rng = np.random.default_rng(0)
    for _ in range(5):
        f = rng.normal(0.6, 0.5, len(MIB_FRACTIONS))
        assert area_under_curve(MIB_FRACTIONS, f) == pytest.approx(_mib_loop(MIB_FRACTIONS, f), abs=1e-12)
    assert area_under_curve(MIB_FRACTIONS, np.ones(10)) == pytest.approx((0.999, 0.0))
    assert area_under_curve(MIB_FRACTIONS, np.zeros(10)) == pytest.approx((0.0, 0.999))
    assert curve_points(5) == [0, 0, 0, 0, 0, 0, 0, 1, 2, 5]
    assert curve_points(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    with pytest.raises(MethodError):
        area_under_curve([0.5, 0.1], [1.0, 1.0])


@pytest.fixture(scope="module")
def and_model():
    return planted("and")


def test_each_point_is_the_faithfulness_of_the_top_k(and_model):
    p = and_model
    ranking = ["MLP0", "L0H1", "L0H0", "L0H2", "L0H3"]
    fractions = (0.2, 0.4, 0.6, 0.8, 1.0)
    res = mib_curve(p.model, p.pairs, ranking, answer="multi", fractions=fractions)
    assert list(res.values.coords["n_kept"].values) == [1, 2, 3, 4, 5]
    for k, got in zip(range(1, 6), res.values.values):
        circuit = [Site.from_label(label) for label in ranking[:k]]
        direct = faithfulness(p.model, circuit, p.pairs, answer="multi", metric="logit_diff",
                              ablation="counterfactual", n_boot=10)
        assert got == pytest.approx(direct.faithfulness, abs=1e-6)
    assert res.values.values[2:] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)  # the AND circuit is complete at 3
    assert (res.cpr, res.cmd) == pytest.approx(area_under_curve(fractions, res.values.values))


def test_the_planted_ranking_beats_decoys_first(and_model):
    p = and_model
    good = {"MLP0": 3.0, "L0H1": 2.0, "L0H0": 1.5, "L0H2": 1e-8, "L0H3": 0.0}
    bad = {"L0H2": 3.0, "L0H3": 2.0, "MLP0": 1.0, "L0H0": 0.5, "L0H1": 0.4}
    fractions = (0.2, 0.4, 0.6, 0.8, 1.0)
    g = mib_curve(p.model, p.pairs, good, answer="multi", fractions=fractions)
    b = mib_curve(p.model, p.pairs, bad, answer="multi", fractions=fractions)
    assert g.cpr > b.cpr and g.cmd < b.cmd
    assert g.ranking == ["MLP0", "L0H1", "L0H0", "L0H2", "L0H3"]
    # Signed scores: a large negative score ranks last unless absolute=True.
    signed = mib_curve(p.model, p.pairs, {**good, "L0H3": -5.0}, answer="multi", fractions=fractions)
    assert signed.ranking[0] == "L0H3"
    unsigned = mib_curve(p.model, p.pairs, {**good, "L0H3": -5.0}, answer="multi", fractions=fractions,
                         absolute=False)
    assert unsigned.ranking[-1] == "L0H3"


def test_discovery_reports_the_cpr_of_its_ranking(and_model):
    p = and_model
    res = p.discover(ablation="counterfactual")
    direct = mib_curve(p.model, p.pairs, res.values, answer="multi", metric=p.spec.metric)
    assert res.cpr == pytest.approx(direct.cpr, abs=1e-9) and res.cmd == pytest.approx(direct.cmd, abs=1e-9)
    assert res.mib_faithfulness == pytest.approx(list(direct.values.values), abs=1e-9)
    assert res.mib_n_kept == curve_points(5)


def test_result_conformance_and_bad_input(and_model):
    p = and_model
    assert isinstance(MIBCurveResult.example().plot(), object)
    for scores, match in (({}, "no component"), (["MLP0", "MLP0"], "twice"), ({"MLP0": float("nan")}, "finite"),
                          (3, "mapping")):
        with pytest.raises(MethodError, match=match):
            mib_curve(p.model, p.pairs, scores)
    with pytest.raises(MethodError, match="unknown ablation"):
        mib_curve(p.model, p.pairs, ["MLP0"], ablation="gaussian")
    with pytest.raises(MethodError, match="fractions"):
        mib_curve(p.model, p.pairs, ["MLP0"], fractions=(0.5, 0.2))
    with pytest.raises(MethodError, match="pairs"):
        mib_curve(p.model, p.prompts, ["MLP0"])


# ---- MIB's submission layout --------------------------------------------------------------------


def test_mib_edge_count_is_mibs():
    assert mib_edge_count(12, 12) == 32491  # MIB's EDGE_COUNTS["gpt2"]


def test_export_mib_graph(and_model, tmp_path):
    import json

    from arithinterp.methods.edge_attribution import edge_attribution_patch

    p = and_model
    edges = edge_attribution_patch(p.model, p.pairs, receivers=MIB_RECEIVERS, n_boot=10, progress=False)
    path = export_mib_graph(edges, tmp_path / "graph.json", top_n=6)
    graph = json.loads(path.read_text())
    assert set(graph) == {"cfg", "nodes", "edges"} and graph["cfg"]["n_layers"] == 1
    assert len(graph["edges"]) == mib_edge_count(1, p.model.shape.n_heads)
    assert set(graph["nodes"]) == {"input", "logits", "m0"} | {f"a0.h{h}" for h in range(4)}
    # Every score is the edge's EAP value, under MIB's names.
    assert graph["edges"]["a0.h0->m0"]["score"] == pytest.approx(float(edges.values.sel(component="L0H0",
                                                                                          site="MLP0")))
    assert graph["edges"]["input->a0.h1<v>"]["score"] == pytest.approx(float(edges.values.sel(component="embed",
                                                                                               site="L0H1.v")))
    # The planted circuit's edges are among the top 6 (EAP is first order: the heads also get a direct
    # edge to the logits through the final norm); decoys write nothing anyone reads.
    top = {k for k, e in graph["edges"].items() if e["in_graph"]}
    assert {"a0.h0->m0", "a0.h1->m0", "m0->logits"} <= top
    assert abs(graph["edges"]["a0.h2->m0"]["score"]) < 1e-6
    with pytest.raises(MethodError, match="every edge"):
        to_mib_graph(edge_attribution_patch(p.model, p.pairs, n_boot=10, progress=False))
