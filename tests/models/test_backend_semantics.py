"""Each site kind means the same thing on a backend as in a literal GPT-2 forward."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from arithinterp.models import Site, load_model
from tests.models.gpt2_oracle import gpt2_forward

KINDS = ["embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out",
         "attn_head", "q", "k", "v", "pattern", "mlp_post", "final_resid"]
BACKEND_NAMES = ["transformer_lens", "nnsight"]


def _layerless(kind):
    return kind in ("embed", "final_resid")


@pytest.fixture(scope="module")
def oracle_model(tiny_hf_dirs):
    return GPT2LMHeadModel.from_pretrained(tiny_hf_dirs["gpt2"], use_safetensors=True).eval()


@pytest.fixture(scope="module", params=BACKEND_NAMES)
def model(request, tiny_hf_dirs):
    return load_model(str(tiny_hf_dirs["gpt2"]), backend=request.param)


def test_logits_match_hf(model, oracle_model, tiny_tokens):
    with torch.no_grad():
        ref = oracle_model(tiny_tokens).logits
        mine, _ = gpt2_forward(oracle_model, tiny_tokens)
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.logits(tiny_tokens), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_matches_literal_forward(model, oracle_model, tiny_tokens, kind):
    layer = None if _layerless(kind) else 1
    with torch.no_grad():
        _, acts = gpt2_forward(oracle_model, tiny_tokens)
    _, cache = model.run_with_cache(tiny_tokens, [Site(kind, layer)])
    torch.testing.assert_close(cache[Site(kind, layer)], acts[(kind, layer)], atol=1e-5, rtol=0)


def _selected_patch(kind, layer):
    """A site with selections and a patch value for it, plus the oracle hook doing the same."""
    # Not hash(kind): str hashes change per process, and the patch must be reproducible.
    g = torch.Generator().manual_seed(sum(map(ord, kind)))
    if kind in ("attn_head", "q", "k", "v"):
        site = Site(kind, layer, head=2, pos=3)
        value = torch.randn(4, 8, generator=g)

        def oracle(x):
            x = x.clone()
            x[:, 3, 2] = value
            return x
    elif kind == "pattern":
        site = Site(kind, layer, head=1, pos=5)
        value = torch.softmax(torch.randn(4, 8, generator=g), -1)

        def oracle(x):
            x = x.clone()
            x[:, 1, 5] = value
            return x
    elif kind == "mlp_post":
        site = Site(kind, layer, neuron=7, pos=-1)
        value = torch.full((4,), 3.0)

        def oracle(x):
            x = x.clone()
            x[:, -1, 7] = value
            return x
    else:
        site = Site(kind, layer, pos=2)
        value = torch.randn(4, 32, generator=g)

        def oracle(x):
            x = x.clone()
            x[:, 2] = value
            return x
    return site, value, oracle


@pytest.mark.parametrize("kind", KINDS)
def test_patch_matches_literal_forward(model, oracle_model, tiny_tokens, kind):
    layer = None if _layerless(kind) else 0
    site, value, oracle_hook = _selected_patch(kind, layer)
    with torch.no_grad():
        ref, _ = gpt2_forward(oracle_model, tiny_tokens, {(kind, layer): oracle_hook})
        clean = oracle_model(tiny_tokens).logits
    got = model.run_with_patches(tiny_tokens, {site: value})
    assert (ref - clean).abs().max() > 1e-4, "the patch must change the output"
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_function_patch_sees_current_activation(model, oracle_model, tiny_tokens):
    site = Site("mlp_out", 1)
    got = model.run_with_patches(tiny_tokens, {site: lambda x: 2 * x})
    with torch.no_grad():
        ref, _ = gpt2_forward(oracle_model, tiny_tokens, {("mlp_out", 1): lambda x: 2 * x})
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["resid_pre", "resid_mid", "attn_head", "mlp_post", "embed"])
def test_gradients_match_autograd_on_literal_forward(model, oracle_model, tiny_tokens, kind):
    layer = None if _layerless(kind) else 1
    site = Site(kind, layer)

    def metric(logits):
        return logits[:, -1, 3].sum() - logits[:, -1, 5].sum()

    got = model.gradients(tiny_tokens, [site], metric)
    keep = {}

    def grab(x):
        x = x.detach().requires_grad_(True)
        keep["x"] = x
        return x

    logits, _ = gpt2_forward(oracle_model, tiny_tokens, {(kind, layer): grab})
    value = metric(logits)
    (ref,) = torch.autograd.grad(value, [keep["x"]])
    torch.testing.assert_close(got.value, value.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got.gradients[site], ref, atol=1e-5, rtol=1e-4)
    assert all(p.requires_grad for p in model.backend.module().parameters()), "flags restored"


def test_cache_sees_patched_values_downstream(model, tiny_tokens):
    site = Site("resid_pre", 1)
    zeros = torch.zeros(32)
    _, cache = model.run_with_cache(tiny_tokens, [site, Site("resid_post", 0)], patches={site: zeros})
    assert torch.all(cache[site] == 0)
    assert cache[Site("resid_post", 0)].abs().sum() > 0
