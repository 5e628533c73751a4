"""Interchange interventions, DAS and the localisation sweep against known answers.

* an oracle: the batched intervention equals a literal one (one forward pass per pair, the
  site's value computed by hand and patched as a tensor);
* planted truth: on the decoy model L0H0 copies ``a`` to the answer position and the decoy
  L0H2 copies it too into dims nothing reads; on the AND model neuron 100 of MLP0 is the
  carry neuron at position 3. The variables must be found there (IIA 1) and not elsewhere;
* bad input is a ``MethodError`` before any forward pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from arithinterp.errors import MethodError
from arithinterp.methods import das, interchange_intervention, localize_variables
from arithinterp.methods.interchange import Featurizer, random_basis
from arithinterp.models import Site
from arithinterp.planted import planted
from arithinterp.tasks import causal_model

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def decoy():
    p = planted("decoy", n=100)
    cm = causal_model(p.prompts.spec)
    return p, cm, cm.make_pairs(p.prompts, "a_digit_0", seed=1)


@pytest.fixture(scope="module")
def and_model():
    p = planted("and", n=100, seed=5)
    cm = causal_model(p.prompts.spec)
    return p, cm, cm.make_pairs(p.prompts, "carry_in_1", seed=1)


def _literal_iia(model, cm, pairs, variable, site, basis):
    """One forward pass per pair: the site's value set by hand (no batching, no patch function)."""
    from arithinterp.tasks import tokenize

    cf = tokenize(cm.counterfactual_prompts(pairs, variable), model.tokenizer)
    src = tokenize(pairs.corrupt, model.tokenizer)
    keep = cf.prompt_len if cf.answer_len == 1 else cf.tokens.shape[1] - 1
    positions = list(range(cf.prompt_len - 1, cf.prompt_len - 1 + cf.answer_len))
    whole = site.whole()
    hits = []
    for i in range(len(pairs)):
        _, c_base = model.run_with_cache(cf.tokens[i:i + 1, :keep], [whole])
        _, c_src = model.run_with_cache(src.tokens[i:i + 1, :keep], [whole])
        h_base, h_src = c_base[whole][0, site.pos].clone(), c_src[whole][0, site.pos]
        index = (site.head,) if site.head is not None else ()
        b, s = h_base[index].reshape(-1).double(), h_src[index].reshape(-1).double()
        new = b + basis.T @ (basis @ (s - b))
        h_base[index] = new.reshape(h_base[index].shape).to(h_base.dtype)
        value = c_base[whole].clone()
        value[0, site.pos] = h_base
        logits = model.logits(cf.tokens[i:i + 1, :keep], {whole: value})
        hits.append(bool((logits[0, positions].argmax(-1) == cf.answer_tokens[i]).all()))
    return np.array(hits, dtype=float)


def test_batched_intervention_equals_the_literal_oracle(decoy):
    p, cm, pairs = decoy
    site = Site("resid_mid", 0, pos=3)
    basis = random_basis(256, 40, seed=3).double()
    # a subspace holding part of A and part of B: successes are neither all nor none
    basis = torch.linalg.qr(torch.cat([basis[:38], torch.eye(256, dtype=torch.float64)[[40, 52]]]).T)[0].T
    res = interchange_intervention(p.model, cm, pairs[:40], variable="a_digit_0", site=site, subspace=basis)
    oracle = _literal_iia(p.model, cm, pairs[:40], "a_digit_0", site, basis)
    np.testing.assert_array_equal(res.values.values, oracle)
    head = Site("attn_head", 0, head=0, pos=3)
    eye = torch.eye(64, dtype=torch.float64)[:6]
    res = interchange_intervention(p.model, cm, pairs[:40], variable="a_digit_0", site=head, subspace=eye)
    np.testing.assert_array_equal(res.values.values, _literal_iia(p.model, cm, pairs[:40], "a_digit_0", head, eye))
    assert 0 < res.iia < 1


def test_operand_copy_found_at_its_head_not_at_the_decoy(decoy):
    p, cm, pairs = decoy
    at = lambda site: interchange_intervention(p.model, cm, pairs, variable="op1_ones", site=site).iia  # noqa: E731
    assert at(Site("attn_head", 0, head=0, pos=3)) == 1.0  # the copying head, full vector
    assert at(Site("resid_pre", 0, pos=0)) == 1.0  # the operand token itself
    assert at(Site("attn_head", 0, head=2, pos=3)) == 0.0  # the decoy copies a, and nothing reads it
    assert at(Site("resid_pre", 0, pos=1)) == 0.0  # '+'
    # the head that copies b: swapping b succeeds exactly where a_base + b_source = a_source + b_base
    f = pairs.frame
    chance = float(((f.clean_operand_a + f.corrupt_operand_b) == (f.corrupt_operand_a + f.clean_operand_b)).mean())
    assert 0 < chance < 0.2
    assert at(Site("attn_head", 0, head=1, pos=3)) == chance


def test_carry_neuron_holds_the_carry(and_model):
    p, cm, pairs = and_model
    neuron = Site("mlp_post", 0, neuron=100, pos=3)
    res = interchange_intervention(p.model, cm, pairs, variable="carry_in_1", site=neuron)
    assert res.iia == 1.0 and res.dim == 1 and len(res.values) == len(pairs)
    assert interchange_intervention(p.model, cm, pairs, variable="carry_in_1",
                                    site=Site("mlp_post", 0, neuron=100, pos=2)).iia == 0.0
    # the unit direction of neuron 100 inside the whole MLP at position 3
    mlp = Site("mlp_post", 0, pos=3)
    e100 = np.eye(128)[[100]]
    assert interchange_intervention(p.model, cm, pairs, variable="carry_in_1", site=mlp, subspace=e100).iia == 1.0


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_das_learns_the_carry_subspace(backend):
    p = planted("and", backend, n=100, seed=5)
    cm = causal_model(p.prompts.spec)
    pairs = cm.make_pairs(p.prompts, "carry_in_1", seed=1)
    res = das(p.model, cm, pairs, variable="carry_in_1", site=Site("mlp_post", 0, pos=3), dim=1, steps=60,
              lr=0.05, test_fraction=0.3)
    assert res.iia == 1.0 and res.iia_train == 1.0
    scores = res.values.to_series()
    assert scores["probe_direction"] == 1.0  # the probe's direction is the carry neuron's
    assert scores["random_rotation"] < 0.5
    # the learned direction leans most on neuron 100 (at position 3 only it differs between
    # prompts, so the other weights get little or no gradient and need not vanish)
    assert int(res.featurizer.basis[0].abs().argmax()) == 100
    # the learned subspace reused as a subspace of interchange_intervention
    again = interchange_intervention(p.model, cm, pairs, variable="carry_in_1", site=Site("mlp_post", 0, pos=3),
                                     subspace=res)
    assert again.iia == 1.0 and again.subspace == "das"


def test_boundless_das_finds_the_operand_subspace(decoy):
    p, cm, pairs = decoy
    res = das(p.model, cm, pairs, variable="a_digit_0", site=Site("attn_head", 0, head=0, pos=3), dim=None,
              steps=150, lr=0.05, test_fraction=0.3, controls=False)
    assert res.boundless and res.iia >= 0.95
    assert res.dim < 64


def test_localisation_on_the_and_model(and_model):
    p, cm, _ = and_model
    res = localize_variables(p.model, p.prompts, variables=["carry_in_1"], steps=40, n_test=100)
    iia = res.values.sel(target="carry_in_1")
    assert iia.sel(layer=1, pos=3) == 1.0  # after MLP0, where the carry neuron wrote the tens digit
    # after MLP0 nothing else holds it; '+' and '=' never do; the operand tokens cause the
    # carry, so a one-dim swap of them succeeds on part of the pairs, well below 1
    assert (iia.sel(layer=1).drop_sel(pos=3) == 0).all()
    assert (iia.sel(pos=[1, 3], layer=0) == 0).all()
    assert (iia.sel(layer=0, pos=[0, 2]) < 0.7).all()
    agree = res.agreement().set_index(["layer", "pos"])["agreement"]
    assert agree[(1, 3)] == "decodable and causal"
    best = res.best().iloc[0]
    assert (best.layer, best.pos, best.iia_best) == (1, 3, 1.0)


def test_bad_input_is_a_method_error_before_training(decoy, monkeypatch):
    p, cm, pairs = decoy
    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran")
    monkeypatch.setattr(p.model.backend, "run", no_forward)
    site = Site("attn_head", 0, head=0, pos=3)
    with pytest.raises(MethodError, match="no variable 'carry_in_3'"):
        das(p.model, cm, pairs, variable="carry_in_3", site=site)
    with pytest.raises(MethodError, match="dim must be an int in 1..64"):
        das(p.model, cm, pairs, variable="a_digit_0", site=site, dim=65)
    with pytest.raises(MethodError, match="dimension 80 exceeds the site's width 64"):
        interchange_intervention(p.model, cm, pairs, variable="a_digit_0", site=site,
                                 subspace=Featurizer(torch.zeros(80, 64)))
    with pytest.raises(MethodError, match="do not change 'b_digit_0'"):
        das(p.model, cm, pairs, variable="b_digit_0", site=site)
    with pytest.raises(MethodError, match="needs a position"):
        interchange_intervention(p.model, cm, pairs, variable="a_digit_0", site=Site("attn_head", 0, head=0))


def test_mib_export_round_trip(and_model, tmp_path):
    import json

    from safetensors.torch import load_file

    from arithinterp.methods.mib_export import export_mib

    p, cm, pairs = and_model
    site = Site("resid_post", 0, pos=3)
    res = das(p.model, cm, pairs, variable="carry_in_1", site=site, dim=1, steps=40, lr=0.05, controls=False)
    assert res.iia == 1.0
    folder = export_mib(res, p.model, tmp_path)
    assert folder.name == "arithmetic_GPT2LMHeadModel_ones_carry"
    stem = folder / "ResidualStream(Layer-0,Token-3)"
    rot = load_file(f"{stem}_featurizer")["weight"]
    inv = load_file(f"{stem}_inverse_featurizer")["weight"]
    indices = json.loads(Path(f"{stem}_indices").read_text())
    assert indices == [0]
    torch.testing.assert_close(rot @ inv, torch.eye(128), atol=1e-5, rtol=0)
    torch.testing.assert_close(rot[indices], res.featurizer.basis, atol=1e-6, rtol=0)
    again = interchange_intervention(p.model, cm, pairs, variable="ones_carry", site=site, subspace=rot[indices])
    assert again.iia == 1.0
