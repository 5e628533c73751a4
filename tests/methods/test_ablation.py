"""ablate, path_patch and faithfulness against literal and hand computations."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from arithinterp.errors import ArithInterpError, ConfigError, SiteError, TokenizationError
from arithinterp.methods.ablation import (
    FaithfulnessResult,
    PathPatchingResult,
    ablate,
    faithfulness,
    path_patch,
)
from arithinterp.methods.metrics import logit_diff, tokenize_pairs
from arithinterp.methods.patching import patch_activations
from arithinterp.models import Site, load_model
from arithinterp.tasks import PromptPairs, TaskSpec, generate, make_pairs
from tests.conftest import build_tiny_hf, scaled_variant


@pytest.fixture(scope="module")
def model(tiny_hf_dirs, tmp_path_factory):
    return load_model(str(scaled_variant(tiny_hf_dirs["gpt2"], tmp_path_factory.mktemp("sharp2"))))


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_layer")
    return load_model(str(scaled_variant(build_tiny_hf(root / "base", "gpt2", seed=1, n_layer=1), root / "sharp")))


@pytest.fixture(scope="module")
def attn_only(tiny_hf_dirs, tmp_path_factory):
    return load_model(str(scaled_variant(tiny_hf_dirs["gpt2"], tmp_path_factory.mktemp("attn_only"), zero_mlps=True)))


@pytest.fixture(scope="module")
def pairs():
    # 1-digit operands, 2-digit fixed answers: two teacher-forced answer tokens.
    return make_pairs(generate(TaskSpec(operation="add", digits=1, format="fixed", n=6, seed=5)), "operand_a")


@pytest.fixture(scope="module")
def prompts():
    return generate(TaskSpec(operation="add", operand_range=(0, 4), format="plain", n=10, seed=6))


# ---- ablate -----------------------------------------------------------------------------


def test_zero_and_mean_ablation_equal_literal_patches(model, prompts):
    tokens = model.to_tokens(list(prompts.prompts))
    site = Site("attn_head", 1, head=2)
    _, cache = model.run_with_cache(tokens, [site])
    expected = model.run_with_patches(tokens, {site: torch.zeros_like(cache[site])})
    torch.testing.assert_close(ablate(model, tokens, site, kind="zero"), expected)

    reference = model.to_tokens(list(generate(TaskSpec(operation="sub", operand_range=(0, 4), format="plain",
                                                       n=7, seed=1)).prompts))
    _, ref_cache = model.run_with_cache(reference, [site, Site("mlp_post", 0)])
    expected = model.run_with_patches(tokens, {site: ref_cache[site].mean(0),
                                               Site("mlp_post", 0): ref_cache[Site("mlp_post", 0)].mean(0)})
    got = ablate(model, tokens, [site, Site("mlp_post", 0)], kind="mean", reference_tokens=reference)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_resample_takes_another_prompts_activation(model, prompts):
    tokens = model.to_tokens(list(prompts.prompts))
    site = Site("mlp_out", 0, pos=-1)
    got = ablate(model, tokens, site, kind="resample", seed=3)
    torch.testing.assert_close(got, ablate(model, tokens, site, kind="resample", seed=3))
    _, cache = model.run_with_cache(tokens, [site])
    n = len(tokens)
    for i in range(n):
        # Row j of this run is prompt i with prompt j's activation.
        every_donor = model.run_with_patches(tokens[i:i + 1].repeat(n, 1), {site: cache[site]})
        donors = [j for j in range(n) if torch.allclose(every_donor[j], got[i], atol=1e-5)]
        assert any(j != i for j in donors), f"prompt {i} was not given another prompt's activation"


def test_ablation_bad_inputs_raise_before_running(model, prompts, counted):
    tokens = model.to_tokens(list(prompts.prompts))
    longer = model.to_tokens(["12+3=", "40+1="])
    with pytest.raises(TokenizationError):
        ablate(model, tokens, Site("mlp_out", 0), kind="mean", reference_tokens=longer)
    with pytest.raises(ConfigError):
        ablate(model, tokens, Site("mlp_out", 0), kind="gaussian")
    with pytest.raises(SiteError):
        ablate(model, tokens, Site("mlp_out", 9), kind="zero")
    assert counted.calls == 0


# ---- path patching ----------------------------------------------------------------------


def _direct_effect(model, batch, layer: int, head: int) -> float:
    """Clean final residual plus (z_corrupt − z_clean) @ W_O of one head, through the
    final norm and unembedding: the head's direct effect, by hand."""
    last = Site("resid_post", model.shape.n_layers - 1)
    z = Site("attn_head", layer)
    _, clean = model.run_with_cache(batch.clean, [last, z])
    _, corrupt = model.run_with_cache(batch.corrupt, [z])
    delta = (corrupt[z] - clean[z])[:, :, head] @ model.weights().W_O[layer, head]
    logits = model.unembed(clean[last] + delta)
    return logit_diff(logits[:, batch.answer_positions], batch.clean_answer, batch.corrupt_answer).double().mean().item()


def test_path_patching_to_the_final_residual_is_the_direct_effect(model, pairs):
    batch = tokenize_pairs(pairs, model.tokenizer)
    heads = [Site("attn_head", 0, head=1), Site("attn_head", 1, head=3)]
    res = path_patch(model, pairs, heads, Site("resid_post", 1), normalize=False, progress=False)
    assert isinstance(res, PathPatchingResult) and res.dims == ("site",)
    for site in heads:
        expected = _direct_effect(model, batch, site.layer, site.head)
        np.testing.assert_allclose(res.values.sel(site=site.label).item(), expected, rtol=1e-4, atol=1e-4)
    after_norm = path_patch(model, pairs, heads, [Site("final_resid")], normalize=False, progress=False)
    np.testing.assert_allclose(after_norm.values.values, res.values.values, rtol=1e-4, atol=1e-4)

    normalised = path_patch(model, pairs, heads, Site("resid_post", 1), progress=False)
    clean, corrupt = normalised.meta.extra["clean_mean"], normalised.meta.extra["corrupt_mean"]
    np.testing.assert_allclose(normalised.values.values, (res.values.values - corrupt) / (clean - corrupt), rtol=1e-6)


def test_one_layer_model_path_patching_through_the_logits(one_layer, pairs):
    batch = tokenize_pairs(pairs, one_layer.tokenizer)
    res = path_patch(one_layer, pairs, "attn_head", [Site("final_resid")], normalize=False, progress=False)
    assert res.dims == ("layer", "head")
    for head in range(one_layer.shape.n_heads):
        np.testing.assert_allclose(res.values.sel(layer=0, head=head).item(), _direct_effect(one_layer, batch, 0, head),
                                   rtol=1e-4, atol=1e-4)
    # The last MLP reaches the logits only directly: path patching = activation patching.
    mlp = path_patch(one_layer, pairs, [Site("mlp_out", 0)], [Site("final_resid")], normalize=False, progress=False)
    site = Site("mlp_out", 0)
    _, corrupt = one_layer.run_with_cache(batch.corrupt, [site])
    logits = one_layer.run_with_patches(batch.clean, {site: corrupt[site]})
    expected = logit_diff(logits[:, batch.answer_positions], batch.clean_answer, batch.corrupt_answer).mean().item()
    np.testing.assert_allclose(mlp.values.item(), expected, rtol=1e-5, atol=1e-5)


def test_attention_only_model_path_patching_equals_activation_patching(attn_only, pairs):
    # With every MLP zero, a layer-0 head reaches the output only through the residual
    # stream after block 0, and a last-layer head only directly.
    early = path_patch(attn_only, pairs, "attn_head", [Site("resid_pre", 1)], normalize=False, progress=False)
    late = path_patch(attn_only, pairs, "attn_head", [Site("final_resid")], normalize=False, progress=False)
    act = patch_activations(attn_only, pairs, kind="attn_head", per_position=False, direction="noise",
                            normalize=False, engine="literal", progress=False)
    np.testing.assert_allclose(early.values.sel(layer=0).values, act.values.sel(layer=0).values, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(late.values.sel(layer=1).values, act.values.sel(layer=1).values, rtol=1e-4, atol=1e-4)


def test_qkv_receivers_carry_only_the_path_into_the_next_attention(attn_only, pairs):
    batch = tokenize_pairs(pairs, attn_only.tokenizer)
    sender = Site("attn_head", 0, head=2)
    receivers = [Site(k, 1) for k in ("q", "k", "v")]
    res = path_patch(attn_only, pairs, [sender], receivers, normalize=False, progress=False)
    # By hand: layer 1's attention reads the patched stream, its skip connection does not.
    _, corrupt = attn_only.run_with_cache(batch.corrupt, [sender])
    _, patched = attn_only.run_with_cache(batch.clean, [Site("attn_out", 1)], {sender: corrupt[sender]})
    logits = attn_only.run_with_patches(batch.clean, {Site("attn_out", 1): patched[Site("attn_out", 1)]})
    expected = logit_diff(logits[:, batch.answer_positions], batch.clean_answer, batch.corrupt_answer).mean().item()
    np.testing.assert_allclose(res.values.item(), expected, rtol=1e-4, atol=1e-4)


def test_downstream_mlps_are_frozen(model, pairs):
    batch = tokenize_pairs(pairs, model.tokenizer)
    sender = Site("attn_head", 0, head=1)
    res = path_patch(model, pairs, [sender], [Site("resid_pre", 1)], normalize=False, progress=False)
    _, clean = model.run_with_cache(batch.clean, [Site("mlp_out", 0)])
    _, corrupt = model.run_with_cache(batch.corrupt, [sender])
    logits = model.run_with_patches(batch.clean, {sender: corrupt[sender], Site("mlp_out", 0): clean[Site("mlp_out", 0)]})
    expected = logit_diff(logits[:, batch.answer_positions], batch.clean_answer, batch.corrupt_answer).mean().item()
    np.testing.assert_allclose(res.values.item(), expected, rtol=1e-4, atol=1e-4)
    assert isinstance(res.plot(), go.Figure)


@pytest.mark.parametrize(
    ("senders", "receivers", "error"),
    [
        ("pattern", [Site("final_resid")], SiteError),
        ([Site("q", 0)], [Site("final_resid")], SiteError),
        ([Site("mlp_out", 0)], [Site("attn_out", 1)], SiteError),
        ([Site("mlp_out", 0)], [], ConfigError),
        ([Site("mlp_out", 7)], [Site("final_resid")], SiteError),
    ],
)
def test_path_patch_bad_sites_raise_before_running(model, pairs, counted, senders, receivers, error):
    with pytest.raises(error) as info:
        path_patch(model, pairs, senders, receivers, progress=False)
    assert isinstance(info.value, ArithInterpError)
    assert counted.calls == 0


def test_path_patch_unequal_lengths_raise_before_running(model, pairs, counted):
    longer = generate(TaskSpec(operation="add", digits=2, format="fixed", n=6, seed=5))
    with pytest.raises(TokenizationError):
        path_patch(model, PromptPairs(pairs.clean, longer, "random"), "attn_head", [Site("final_resid")],
                   progress=False)
    assert counted.calls == 0


# ---- faithfulness -----------------------------------------------------------------------


def _all_components(model):
    heads = [Site("attn_head", layer, head=h) for layer in range(model.shape.n_layers)
             for h in range(model.shape.n_heads)]
    return heads + [Site("mlp_out", layer) for layer in range(model.shape.n_layers)]


@pytest.mark.parametrize("metric", ["nl", "logit_diff"])
def test_faithfulness_endpoints_are_exact(model, prompts, metric):
    full = faithfulness(model, _all_components(model), prompts, metric=metric, n_boot=50)
    assert full.faithfulness == 1.0
    layers = [Site(k, layer) for layer in range(model.shape.n_layers) for k in ("attn_out", "mlp_out")]
    assert faithfulness(model, layers, prompts, metric=metric, n_boot=50).faithfulness == 1.0
    empty = faithfulness(model, [], prompts, metric=metric, n_boot=50)
    assert empty.faithfulness == 0.0
    assert empty.values.sel(target="circuit").item() == empty.values.sel(target="ablated").item()
    assert full.values.sel(target="full").item() == empty.values.sel(target="full").item()


def _nl_by_hand(model, tokens, answers, patches):
    logits = model.run_with_patches(tokens, patches)[:, -1].double()
    return (logits.gather(-1, answers[:, None])[:, 0] / logits.max(-1).values).mean().item()


@pytest.mark.parametrize("use_reference", [False, True])
def test_faithfulness_equals_a_hand_computation(model, prompts, use_reference):
    reference = generate(TaskSpec(operation="sub", operand_range=(0, 4), format="plain", n=9, seed=2))
    circuit = [Site("attn_head", 0, head=2), Site("mlp_out", 1), Site("mlp_post", 0, neuron=3),
               Site("mlp_post", 0, neuron=7)]
    res = faithfulness(model, circuit, prompts, reference=reference if use_reference else None, n_boot=50)
    assert isinstance(res, FaithfulnessResult)

    tokens = model.to_tokens(list(prompts.prompts))
    answers = torch.tensor([model.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in prompts.answers])
    ref = model.to_tokens(list(reference.prompts)) if use_reference else tokens
    z0, z1, n0, n1 = (Site("attn_head", 0), Site("attn_head", 1), Site("mlp_post", 0), Site("mlp_post", 1))
    _, cache = model.run_with_cache(ref, [z0, z1, n0, n1])
    mean = {s: cache[s].double().mean(0).float() for s in (z0, z1, n0, n1)}

    def keep(site, kept):
        def fn(x):
            x = x.clone()
            drop = [i for i in range(x.shape[2]) if i not in kept]
            x[:, :, drop] = mean[site][:, drop]
            return x
        return fn

    # Ablate head by head (z) and neuron by neuron (mlp_post), not through attn_out / mlp_out.
    everything = {z0: keep(z0, ()), z1: keep(z1, ()), n0: keep(n0, ()), n1: keep(n1, ())}
    in_circuit = {z0: keep(z0, (2,)), z1: keep(z1, ()), n0: keep(n0, (3, 7))}
    nl_c, nl_m, nl_0 = (_nl_by_hand(model, tokens, answers, p) for p in (in_circuit, {}, everything))
    np.testing.assert_allclose(res.values.values, [nl_c, nl_m, nl_0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.faithfulness, (nl_c - nl_0) / (nl_m - nl_0), rtol=1e-4, atol=1e-5)
    assert res.faithfulness_ci_low <= res.faithfulness_ci_high
    assert res.meta.options["circuit"] == [s.label for s in circuit]
    assert res.meta.options["reference_hash"] == (reference.hash if use_reference else prompts.hash)


def test_faithfulness_accuracy_and_plot(model, prompts):
    res = faithfulness(model, [Site("mlp_out", 0)], prompts, metric="accuracy", n_boot=50)
    assert set(np.unique(res.values.values)) <= set(np.linspace(0, 1, len(prompts) + 1).round(10)) | {0.0, 1.0}
    assert isinstance(res.plot(), go.Figure)


@pytest.mark.parametrize(
    ("circuit", "kwargs", "error"),
    [
        ([Site("attn_head", 0, head=1, pos=-1)], {}, SiteError),
        ([Site("resid_pre", 1)], {}, SiteError),
        ([Site("attn_head", 0, head=9)], {}, SiteError),
        ([Site("mlp_out", 0)], {"metric": "probability"}, ConfigError),
    ],
)
def test_faithfulness_bad_inputs_raise_before_running(model, prompts, counted, circuit, kwargs, error):
    with pytest.raises(error):
        faithfulness(model, circuit, prompts, **kwargs)
    assert counted.calls == 0


def test_faithfulness_reference_and_answer_checks(model, prompts, counted):
    longer = generate(TaskSpec(operation="add", operand_range=(10, 14), format="plain", n=4, seed=1))
    with pytest.raises(TokenizationError):
        faithfulness(model, [Site("mlp_out", 0)], prompts, reference=longer)
    multi = generate(TaskSpec(operation="add", digits=2, format="fixed", n=4, seed=1))
    with pytest.raises(TokenizationError, match="answer='single'"):
        faithfulness(model, [Site("mlp_out", 0)], multi)
    assert counted.calls == 0

