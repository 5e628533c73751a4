"""attention_patterns against Hugging Face's own attention weights; the clean-vs-corrupt figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import MethodError
from arithinterp.methods import AttentionResult, attention_patterns, tokenize_pairs
from arithinterp.models import Site, load_model
from arithinterp.tasks import TaskSpec, generate, make_pairs


@pytest.fixture(scope="module")
def setup(tiny_hf_dirs):
    model = load_model(str(tiny_hf_dirs["gpt2"]))
    prompts = generate(TaskSpec(operation="add", digits=2, format="fixed", n=6, seed=0))
    return model, make_pairs(prompts, "operand_a", seed=0)


def test_patterns_equal_hugging_face_attentions(setup):
    model, pairs = setup
    res = attention_patterns(model, pairs, pair=2)
    assert isinstance(res, AttentionResult) and res.dims == ("prompt", "layer", "head", "pos", "key_pos")
    batch = tokenize_pairs(pairs, model.tokenizer, answer="multi")
    d_head = model.shape.d_head
    for i, seq in enumerate((batch.clean[2:3], batch.corrupt[2:3])):
        for layer in range(model.shape.n_layers):
            # The literal pattern: softmax(q k^T / sqrt(d_head)), causal, from the q and k sites.
            q, k = Site("q", layer), Site("k", layer)
            _, cache = model.run_with_cache(seq, [q, k])
            scores = torch.einsum("bqhd,bkhd->bhqk", cache[q].double(), cache[k].double()) / d_head ** 0.5
            n = seq.shape[1]
            scores = scores.masked_fill(~torch.tril(torch.ones(n, n, dtype=torch.bool)), float("-inf"))
            want = torch.softmax(scores, -1)[0].numpy()
            np.testing.assert_allclose(res.values.isel(prompt=i).sel(layer=layer).values, want, atol=1e-5)
    # The runs' tokens: the corrupt prompt differs in operand a, the teacher-forced answer is the clean one.
    clean, corrupt = res.tokens("clean"), res.tokens("corrupt")
    assert "".join(clean) == pairs.clean.prompts[2] + pairs.clean.answers[2][:-1]
    assert "".join(corrupt).startswith(pairs.corrupt.prompts[2]) and clean != corrupt
    with pytest.raises(MethodError, match="pair 99"):
        attention_patterns(model, pairs, pair=99)


def test_figure_shows_clean_and_corrupt_side_by_side_with_tokens_in_the_hover(setup):
    model, pairs = setup
    res = attention_patterns(model, pairs)
    fig = res.figure(1, 0)
    assert [t.name for t in fig.data] == ["clean", "corrupt"]
    n = res.sizes["pos"]
    for trace, run in zip(fig.data, ("clean", "corrupt")):
        z = np.array(trace.z, dtype=float)
        assert z.shape == (n, n) and np.isnan(z[np.triu_indices(n, 1)]).all()
        np.testing.assert_allclose(np.nansum(z, 1), 1.0, atol=1e-5)
        toks = res.tokens(run)
        assert trace.text[n - 1][0] == f"query {n - 1} '{toks[-1]}' → key 0 '{toks[0]}'"
        assert list(trace.x) == [f"{p}:{t}" for p, t in enumerate(toks)]
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1  # one scale for both
