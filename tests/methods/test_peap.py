"""Position-aware edges (PEAP): sum rules against EAP, the key / value split by query, exact path
patching at one position, and the planted AND model's cross-position edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import MethodError
from arithinterp.methods.ablation import path_patch
from arithinterp.methods.attribution import attribution_contrast
from arithinterp.methods.attribution_rules import functional, gradient_passes
from arithinterp.methods.edge_attribution import edge_attribution_patch
from arithinterp.methods.peap import (
    PositionEdgeResult,
    _split_by_query,
    arithmetic_spans,
    position_edge_attribution,
)
from arithinterp.models import Site, load_model
from arithinterp.planted import planted
from arithinterp.tasks import TaskSpec, generate, make_pairs

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FAST = dict(n_boot=10, progress=False, normalize=False)


@pytest.fixture(scope="module")
def gpt2(tiny_hf_dirs):
    return load_model(str(tiny_hf_dirs["gpt2"]), dtype="float64")


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(generate(TaskSpec(operation="add", digits=1, format="fixed", n=6, seed=5)), "random")


def test_arithmetic_schema():
    assert arithmetic_spans(list("12+345=") + ["0", "1"], 7) == (
        ["operand_a"] * 2 + ["operator"] + ["operand_b"] * 3 + ["equals", "answer0", "answer1"])
    assert arithmetic_spans(["<s>", "Q", ":", "12", "+", "54", "="], 7)[:3] == ["prefix"] * 3
    with pytest.raises(MethodError, match="schema 'arithmetic'"):
        arithmetic_spans(["what", "is", "it", "="], 4)


def test_key_and_value_split_by_query_sums_to_their_gradient(gpt2, pairs):
    con = attribution_contrast(gpt2, pairs, direction="denoise", metric="logit_diff", normalize=False,
                               answer="multi", method="atp", ig_steps=1, batch_size=32, n_boot=10)
    sites = [Site(k, 1) for k in ("attn_head", "q", "k", "v", "pattern")]
    part = next(iter(con.parts(32)))
    passes = gradient_passes(gpt2, part, sites, con.metric_fn, "denoise", "atp", 1)
    ft = functional(gpt2)
    for kind in "kv":
        split = _split_by_query(passes, ft, 1, kind)
        torch.testing.assert_close(split.sum(0), passes.grad[Site(kind, 1)], rtol=1e-9, atol=1e-12)
        assert split.abs().max() > 0


def test_spans_add_up_to_position_free_edges(gpt2, pairs):
    peap = position_edge_attribution(gpt2, pairs, **FAST)
    eap = edge_attribution_patch(gpt2, pairs, receivers=("q", "k", "v", "mlp_in", "logits"), **FAST)
    total = peap.values.groupby("sender").sum("component").groupby("receiver").sum("site")
    total = total.sel(sender=eap.values.component, receiver=eap.values.site)
    ok = np.isfinite(eap.values.values)
    np.testing.assert_allclose(total.values[ok], eap.values.values[ok], rtol=1e-8, atol=1e-10)
    assert peap.meta.options["span_names"] == ["operand_a", "operator", "operand_b", "equals", "answer0"]


def test_one_position_against_exact_path_patching(gpt2, pairs):
    """Each layer-0 head's change reaching head 1's value input of layer 1 at one position only:
    exact path patching against the sum of PEAP's cross-position edges out of that position
    (noising; the tiny random model is nearly linear on these small effects)."""
    peap = position_edge_attribution(gpt2, pairs, spans="positions", direction="noise", **FAST)
    senders = [Site("attn_head", 0, head=h) for h in range(gpt2.shape.n_heads)]
    exact_all, estimate_all = [], []
    for pos in range(5):
        exact = path_patch(gpt2, pairs, senders, [Site("v", 1, head=1, pos=pos)], **FAST)
        effect = np.array([float(exact.values.sel(site=s.label)) for s in senders]) - exact.meta.extra["clean_mean"]
        estimate = []
        for s in senders:
            cells = peap.values.sel(component=f"{s.label}@pos{pos}")
            estimate.append(float(cells.where(cells.coords["receiver"] == "L1H1.v", drop=True).sum(skipna=True)))
        np.testing.assert_allclose(estimate, effect, atol=0.25 * np.abs(effect).max() + 1e-9)
        exact_all += effect.tolist()
        estimate_all += estimate
    assert np.corrcoef(exact_all, estimate_all)[0, 1] > 0.95


def test_planted_and_model_cross_position_edges():
    """L0H0 / L0H1 read operand a / b at their own position and carry it to the answer positions:
    the embedding's largest edges into the heads are embed@operand_a -> L0H0.v@equals / answer0 and
    embed@operand_b -> L0H1.v@...; the decoys (attending to '+' and '=') receive nothing."""
    p = planted("and")
    res = position_edge_attribution(p.model, p.pairs, **FAST)
    assert isinstance(res, PositionEdgeResult)
    v = res.values
    into = lambda head: v.where(v.coords["receiver"].isin([f"L0H{head}.{k}" for k in "qkv"]), drop=True)  # noqa: E731
    for head, span in ((0, "operand_a"), (1, "operand_b")):
        cells = into(head).sel(component=f"embed@{span}")
        assert float(np.abs(cells).max()) > 0.3
        best = str(cells.site.values[int(np.nanargmax(np.abs(cells.values)))])
        assert best.startswith(f"L0H{head}.v@") and best.split("@")[1] in ("equals", "answer0")
    for head in (2, 3):
        assert float(np.nanmax(np.abs(into(head).values))) < 1e-5
    with pytest.raises(MethodError, match="unknown schema"):
        position_edge_attribution(p.model, p.pairs, spans="tokens", **FAST)
