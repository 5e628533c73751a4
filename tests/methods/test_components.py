"""Direct logit attribution and neuron heuristics against exact decompositions and planted maps."""

from __future__ import annotations

import numpy as np
import pytest

from arithinterp.methods.components import direct_logit_attribution
from arithinterp.models import Site, load_model
from arithinterp.tasks import TaskSpec, generate, tokenize

ADD = TaskSpec(operation="add", operand_range=(0, 99), format="plain", n=48, seed=1)


@pytest.fixture(scope="module")
def add_model():
    return load_model("zoo:add-2d-tok")


@pytest.fixture(scope="module")
def add_prompts():
    return generate(ADD)


def _logits(model, prompts, against=None):
    tk = tokenize(prompts, model.tokenizer, answer="single")
    tokens = tk.tokens[:, : tk.prompt_len]
    logits = model.logits(tokens)[:, -1].detach().double()
    b_U = model.weights().b_U.detach().double()
    ans = tk.answer_tokens[:, 0]
    value = logits.gather(1, ans[:, None])[:, 0] - b_U[ans]
    if against is not None:
        value = value - logits[:, against] + b_U[against]
    return tokens, ans, value.numpy()


def test_dla_sums_to_answer_logit_on_zoo(add_model, add_prompts):
    res = direct_logit_attribution(add_model, add_prompts, batch_size=20)
    _, _, expected = _logits(add_model, add_prompts)
    np.testing.assert_allclose(res.values.sum("component").values, expected, atol=1e-4)
    assert res.dims == ("prompt", "component")
    s = add_model.shape
    assert res.sizes["component"] == 2 + s.n_layers * (s.n_heads + s.d_mlp + 2) + 1
    # Module totals partition the same sum; the mean carries a bootstrap interval.
    np.testing.assert_allclose(res.totals().sum("component").values, expected, atol=1e-4)
    assert (res.extras["ci_low"] <= res.extras["mean"]).all()
    assert (res.extras["mean"] <= res.extras["ci_high"]).all()


def test_dla_logit_difference_against_a_token(add_model, add_prompts):
    res = direct_logit_attribution(add_model, add_prompts, against=7)
    _, _, expected = _logits(add_model, add_prompts, against=7)
    np.testing.assert_allclose(res.values.sum("component").values, expected, atol=1e-4)


def test_head_dla_equals_hand_computation(add_model, add_prompts):
    res = direct_logit_attribution(add_model, add_prompts)
    tokens, ans, _ = _logits(add_model, add_prompts)
    ln = add_model.backend.hf_model().transformer.ln_f
    w = add_model.weights()
    _, cache = add_model.run_with_cache(tokens, [Site("attn_head", 0, pos=-1), Site("resid_post", 0, pos=-1)])
    x = cache[Site("resid_post", 0, pos=-1)].double()
    sigma = (x.var(-1, unbiased=False) + ln.eps).sqrt()
    head = 2
    write = cache[Site("attn_head", 0, pos=-1)][:, head].double() @ w.W_O[0, head].detach().double()
    normed = (write - write.mean(-1, keepdim=True)) / sigma[:, None] * ln.weight.detach().double()
    hand = (normed * w.W_U.detach().double()[:, ans].T).sum(-1)
    np.testing.assert_allclose(res.heads().sel(layer=0, head=head).values, hand.numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_dla_sums_to_answer_logit_on_tiny_models(tiny_hf_dirs, arch):
    model = load_model(str(tiny_hf_dirs[arch]))
    prompts = generate(TaskSpec(operation="sub", digits=1, allow_negative=False, n=16, seed=0))
    res = direct_logit_attribution(model, prompts, batch_size=5)
    _, _, expected = _logits(model, prompts)
    np.testing.assert_allclose(res.values.sum("component").values, expected, atol=1e-4)
    assert res.heads().sizes == {"prompt": 16, "layer": model.shape.n_layers, "head": model.shape.n_heads}
