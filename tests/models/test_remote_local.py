"""nnsight's remote path, run offline: ``remote="local"`` serializes each request exactly as
for NDIF (arithinterp's hooks, sites and metrics shipped by value, arithinterp itself hidden
while the request is rebuilt) and runs it here. Every primitive the methods use (logits,
caching, patching, gradients) must give what a plain local nnsight model gives, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from arithinterp.methods import patch_activations
from arithinterp.models import Site, load_model
from arithinterp.tasks import TaskSpec, generate, make_pairs

SITES = [Site("attn_head", 0, head=1), Site("resid_pre", 1), Site("mlp_post", 0, neuron=3, pos=-1)]


@pytest.fixture(scope="module")
def models():
    return (load_model("zoo:add-5d", backend="nnsight"),
            load_model("zoo:add-5d", backend="nnsight", remote="local"))


@pytest.fixture(scope="module")
def tokens(models):
    return models[0].to_tokens(["12345+54321=", "99999+00001=", "31415+92653="])


def test_logits(models, tokens):
    local, remote = models
    torch.testing.assert_close(remote.logits(tokens), local.logits(tokens), atol=0, rtol=0)


def test_cache_comes_back(models, tokens):
    local, remote = models
    logits_l, cache_l = local.run_with_cache(tokens, SITES)
    logits_r, cache_r = remote.run_with_cache(tokens, SITES)
    torch.testing.assert_close(logits_r, logits_l, atol=0, rtol=0)
    assert list(cache_r) == list(cache_l)
    for site in SITES:
        torch.testing.assert_close(cache_r[site], cache_l[site], atol=0, rtol=0)


def test_patching(models, tokens):
    local, remote = models
    patch = {Site("attn_head", 0, head=1): lambda x: torch.zeros_like(x), Site("resid_pre", 1, pos=2): lambda x: 2 * x}
    got, want = remote.run_with_patches(tokens, patch), local.run_with_patches(tokens, patch)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert not torch.equal(got, local.logits(tokens))


def test_gradients_are_computed_where_the_pass_runs(models, tokens):
    local, remote = models
    answer = tokens[:, -1]

    def metric(logits):
        return logits[:, -1].log_softmax(-1).gather(-1, answer[:, None]).sum()

    g_l, g_r = local.gradients(tokens, SITES, metric), remote.gradients(tokens, SITES, metric)
    torch.testing.assert_close(g_r.value, g_l.value, atol=0, rtol=0)
    for site in SITES:
        torch.testing.assert_close(g_r.activations[site], g_l.activations[site], atol=0, rtol=0)
        torch.testing.assert_close(g_r.gradients[site], g_l.gradients[site], atol=0, rtol=0)
        assert g_r.gradients[site].abs().sum() > 0


def test_a_literal_patching_sweep(models):
    local, remote = models
    prompts = generate(TaskSpec(operation="add", digits=5, format="fixed", n=6, seed=0))
    pairs = make_pairs(prompts, "operand_b")
    common = dict(kind="attn_out", per_position=False, engine="literal", n_boot=10, progress=False)
    a, b = patch_activations(local, pairs, **common), patch_activations(remote, pairs, **common)
    assert a.values.values.tolist() == b.values.values.tolist()
