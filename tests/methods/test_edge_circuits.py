"""Edge-level circuits: exact checks of edge ablation, and MIB's edge-level curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import MethodError
from arithinterp.methods.edge_attribution import edge_attribution_patch
from arithinterp.methods.edge_circuits import (
    _ablated_writes,
    edge_list,
    mib_edge_curve,
    run_with_edges,
)
from arithinterp.methods.faithfulness import faithfulness, faithfulness_scores
from arithinterp.methods.metrics import tokenize_pairs
from arithinterp.methods.mib import area_under_curve, curve_points
from arithinterp.models import Site
from arithinterp.planted import planted

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

RECEIVERS = {"layer": ("attn_in", "mlp_in", "logits"), "head": ("q", "k", "v", "mlp_in", "logits")}


@pytest.fixture(scope="module")
def compose():
    return planted("compose")


@pytest.mark.parametrize("level", sorted(RECEIVERS))
def test_edge_ablation_exact_checks(compose, level):
    """Every edge ablated (counterfactual) is the corrupt run; every edge kept is the clean run;
    every edge out of a node set C (and the embeddings) kept is node ablation of C."""
    p = compose
    edges = edge_attribution_patch(p.model, p.pairs, receivers=RECEIVERS[level], n_boot=10, progress=False)
    all_edges, _ = edge_list(edges)
    batch = tokenize_pairs(p.pairs, p.model.tokenizer, answer=p.answer)
    ablated = _ablated_writes(p.model, "counterfactual", batch.clean, batch.corrupt, 64)
    torch.testing.assert_close(run_with_edges(p.model, batch.clean, [], all_edges, ablated),
                               p.model.logits(batch.corrupt), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(run_with_edges(p.model, batch.clean, all_edges, all_edges, ablated),
                               p.model.logits(batch.clean), rtol=1e-5, atol=1e-4)
    circuit = sorted(p.truth)
    kept = [e for e in all_edges if e[0] in circuit or e[0] == "embed"]
    logits = run_with_edges(p.model, batch.clean, kept, all_edges, ablated)
    got = float(faithfulness_scores(logits[:, batch.answer_positions], batch.clean_answer, "logit_diff").mean())
    node = faithfulness(p.model, [Site.from_label(c) for c in circuit], p.pairs, answer=p.answer,
                        metric="logit_diff", ablation="counterfactual", n_boot=10)
    assert got == pytest.approx(float(node.values.sel(target="circuit")), rel=1e-5)


def test_edge_ablation_is_backend_invariant(compose):
    p = compose
    other = planted("compose", backend="nnsight")
    edges = edge_attribution_patch(p.model, p.pairs, receivers=RECEIVERS["head"], n_boot=10, progress=False)
    all_edges, scores = edge_list(edges)
    kept = [all_edges[i] for i in np.argsort(-np.abs(scores))[:20]]
    out = []
    for model in (p.model, other.model):
        batch = tokenize_pairs(p.pairs, model.tokenizer, answer=p.answer)
        ablated = _ablated_writes(model, "counterfactual", batch.clean, batch.corrupt, 64)
        out.append(run_with_edges(model, batch.clean, kept, all_edges, ablated))
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-4)


def test_mib_edge_curve(compose):
    p = compose
    edges = edge_attribution_patch(p.model, p.pairs, receivers=RECEIVERS["head"], n_boot=10, progress=False)
    res = mib_edge_curve(p.model, p.pairs, edges, answer=p.answer)
    assert res.level == "edge" and res.n_items == len(edge_list(edges)[0])
    assert list(res.values.coords["n_kept"].values) == curve_points(res.n_items)
    assert res.values.values[-1] == pytest.approx(1.0) and res.values.values[0] == pytest.approx(0.0)
    assert (res.cpr, res.cmd) == pytest.approx(area_under_curve(res.values.coords["fraction"].values, res.values.values))
    assert res.cpr > 0.8  # the planted edges are among the top 10 % of 110
    with pytest.raises(MethodError, match="not supported"):
        mib_edge_curve(p.model, p.pairs, edges, ablation="optimal")
