"""Grouped-query attention: k/v sites have n_kv_heads heads on both backends."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from arithinterp.errors import SiteError
from arithinterp.models import Site, load_model
from tests.conftest import DIGIT_VOCAB, digit_tokenizer


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gqa")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(DIGIT_VOCAB), max_position_embeddings=32, hidden_size=32,
                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, bos_token_id=18, eos_token_id=19)
    LlamaForCausalLM(cfg).save_pretrained(path)
    digit_tokenizer().save_pretrained(path)
    return path


def test_gqa_sites_agree_between_backends(gqa_dir, tiny_tokens):
    tl = load_model(str(gqa_dir), backend="transformer_lens")
    ns = load_model(str(gqa_dir), backend="nnsight")
    assert tl.shape.n_kv_heads == ns.shape.n_kv_heads == 2
    sites = [Site("k", 1, head=1), Site("v", 0, head=0), Site("q", 1, head=3)]
    _, a = tl.run_with_cache(tiny_tokens, sites)
    _, b = ns.run_with_cache(tiny_tokens, sites)
    for site in sites:
        torch.testing.assert_close(a[site], b[site], atol=1e-5, rtol=0)
    with pytest.raises(SiteError, match="key/value heads"):
        tl.run_with_cache(tiny_tokens, [Site("k", 0, head=3)])
    patch = {Site("v", 1, head=1, pos=2): torch.zeros(8)}
    torch.testing.assert_close(tl.run_with_patches(tiny_tokens, patch), ns.run_with_patches(tiny_tokens, patch),
                               atol=1e-4, rtol=0)


def test_fast_patching_on_gqa_equals_literal(gqa_dir):
    from arithinterp.methods import patch_activations
    from arithinterp.tasks import TaskSpec, generate, make_pairs

    model = load_model(str(gqa_dir))
    pairs = make_pairs(generate(TaskSpec(operation="add", digits=2, format="fixed", n=4, seed=0)), "operand_a")
    for kind in ("attn_head", "resid_mid", "k"):
        kw = dict(kind=kind, normalize=False, n_boot=10, progress=False)
        literal = patch_activations(model, pairs, engine="literal", **kw)
        if kind == "k":
            with pytest.warns(UserWarning, match="literal engine"):
                fast = patch_activations(model, pairs, engine="fast", **kw)
            assert fast.sizes["head"] == 2
        else:
            fast = patch_activations(model, pairs, engine="fast", **kw)
        torch.testing.assert_close(torch.as_tensor(fast.values.values), torch.as_tensor(literal.values.values),
                                   atol=1e-5, rtol=0)
