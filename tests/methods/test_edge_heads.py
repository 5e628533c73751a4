"""Per-head q / k / v receivers of edge attribution: sum rules, the derivative along one edge, and
exact path patching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import MethodError
from arithinterp.methods.ablation import path_patch
from arithinterp.methods.attribution_rules import functional
from arithinterp.methods.edge_attribution import edge_attribution_patch
from arithinterp.methods.metrics import logit_diff, tokenize_pairs
from arithinterp.models import Site, load_model
from arithinterp.planted import planted
from arithinterp.tasks import TaskSpec, generate, make_pairs

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FAST = dict(n_boot=10, progress=False)
ALL = ("attn_in", "q", "k", "v", "mlp_in", "logits")


@pytest.fixture(scope="module")
def gpt2(tiny_hf_dirs):
    return load_model(str(tiny_hf_dirs["gpt2"]), dtype="float64")


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(generate(TaskSpec(operation="add", digits=1, format="fixed", n=6, seed=5)), "operand_a")


@pytest.fixture(scope="module")
def edges(gpt2, pairs):
    return edge_attribution_patch(gpt2, pairs, receivers=ALL, normalize=False, **FAST)


def test_layout_one_receiver_per_head_and_kind(gpt2, edges):
    sites = list(edges.values.coords["site"].values)
    n = gpt2.shape.n_heads
    assert sites[:1 + 3 * n] == ["ATTN0"] + [f"L0H{h}.{k}" for k in "qkv" for h in range(n)]
    assert np.isnan(edges.values.sel(component="L0H1", site="L0H0.q"))  # same layer: cannot read it
    assert np.isfinite(edges.values.sel(component="L0H1", site="L1H0.k"))


def test_qkv_receivers_sum_to_the_attention_block(gpt2, edges):
    """Every head reads resid_pre through q, k and v only: the per-head scores add up to attn_in's."""
    n = gpt2.shape.n_heads
    for layer in range(gpt2.shape.n_layers):
        parts = [f"L{layer}H{h}.{k}" for k in "qkv" for h in range(n)]
        total = edges.values.sel(site=parts).sum("site", skipna=False)
        whole = edges.values.sel(site=f"ATTN{layer}")
        ok = np.isfinite(whole.values)
        np.testing.assert_allclose(total.values[ok], whole.values[ok], rtol=1e-8, atol=1e-10)
        assert np.abs(whole.values[ok]).max() > 1e-6


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_head_receiver_edge_is_the_derivative_along_that_edge_alone(gpt2, pairs, edges, kind):
    """Move only head 1's ``kind`` input of layer 1 by eps * (MLP0's write difference): the
    derivative of the metric is the edge's score."""
    batch = tokenize_pairs(pairs, gpt2.tokenizer)
    ft = functional(gpt2)
    mlp0, pre1 = Site("mlp_out", 0), Site("resid_pre", 1)
    _, clean = gpt2.run_with_cache(batch.clean, [mlp0])
    _, corrupt = gpt2.run_with_cache(batch.corrupt, [mlp0, pre1])
    delta = clean[mlp0] - corrupt[mlp0]
    index = "qkv".index(kind)

    def metric_at(eps: float) -> float:
        with torch.no_grad():
            moved = ft.qkv(1, corrupt[pre1] + eps * delta)[index][:, :, 1]
        logits = gpt2.run_with_patches(batch.corrupt, {Site(kind, 1, head=1): moved})[:, batch.answer_positions]
        return float(logit_diff(logits, batch.clean_answer, batch.corrupt_answer).mean())

    eps = 1e-4
    derivative = (metric_at(eps) - metric_at(-eps)) / (2 * eps)
    got = float(edges.values.sel(component="MLP0", site=f"L1H1.{kind}"))
    assert got == pytest.approx(derivative, rel=1e-5, abs=1e-9)
    assert abs(got) > 1e-7, "a vacuous check: the edge has no effect"


def test_head_edges_track_exact_path_patching_on_the_planted_and_model():
    """Path patching (noising: the sender's corrupt value reaches only this receiver) against
    EAP's first-order estimate of the same edge, on the planted AND model: L0H0 and L0H1 reach the
    answer only through MLP0, and into MLP0 the estimate and the exact effect rank the edges alike."""
    p = planted("and")
    eap = edge_attribution_patch(p.model, p.pairs, direction="noise", normalize=False, **FAST)
    senders = [Site("attn_head", 0, head=h) for h in range(4)]
    exact = path_patch(p.model, p.pairs, senders, [Site("mlp_post", 0)], normalize=False, **FAST)
    clean = exact.meta.extra["clean_mean"]
    exact_effect = np.array([float(exact.values.sel(site=s.label)) - clean for s in senders])
    estimate = np.array([float(eap.values.sel(component=s.label, site="MLP0")) for s in senders])
    assert set(np.argsort(-np.abs(exact_effect))[:2].tolist()) == {0, 1}  # the copying heads
    assert set(np.argsort(-np.abs(estimate))[:2].tolist()) == {0, 1}
    np.testing.assert_allclose(np.abs(estimate[2:]), 0, atol=1e-5)  # the decoys: nothing reads them
    np.testing.assert_allclose(np.abs(exact_effect[2:]), 0, atol=1e-5)


def test_every_edge_of_a_small_model_against_exact_path_patching(gpt2, pairs):
    """On the tiny random GPT-2 (float64; small effects, so nearly linear), every edge's EAP
    estimate (noising) is within 25 % of the largest exact path-patching effect of its receiver
    and the two correlate above 0.95: into each head's q, k and v, each MLP and the logits."""
    layer = gpt2.shape.n_layers - 1
    eap = edge_attribution_patch(gpt2, pairs, direction="noise", normalize=False,
                                 receivers=("q", "k", "v", "mlp_in", "logits"), **FAST)
    senders = [Site("attn_head", 0, head=h) for h in range(gpt2.shape.n_heads)] + [Site("mlp_out", 0)]
    receivers = [(Site(k, layer, head=h), f"L{layer}H{h}.{k}") for k in "qkv" for h in range(gpt2.shape.n_heads)]
    receivers += [(Site("mlp_post", layer), f"MLP{layer}"), (Site("final_resid"), "logits")]
    exact_all, estimate_all = [], []
    for receiver, label in receivers:
        exact = path_patch(gpt2, pairs, senders, [receiver], normalize=False, **FAST)
        clean = exact.meta.extra["clean_mean"]
        e = np.array([float(exact.values.sel(site=s.label)) - clean for s in senders])
        a = np.array([float(eap.values.sel(component=s.label, site=label)) for s in senders])
        np.testing.assert_allclose(a, e, atol=0.25 * np.abs(e).max() + 1e-9, err_msg=label)
        exact_all += e.tolist()
        estimate_all += a.tolist()
    assert np.corrcoef(exact_all, estimate_all)[0, 1] > 0.95


def test_head_receivers_refuse_other_methods(gpt2, pairs):
    with pytest.raises(MethodError, match="per-head receivers"):
        edge_attribution_patch(gpt2, pairs, receivers=("q",), method="ig", **FAST)
