"""evaluate and logit_lens against literal computations on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.methods import evaluate, logit_lens
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate


@pytest.fixture(scope="module")
def prompts():
    return generate(TaskSpec(operation="add", digits=2, format="fixed", n=24, seed=3))


@pytest.fixture(scope="module")
def model(tiny_hf_dirs):
    return load_model(str(tiny_hf_dirs["gpt2"]))


def _greedy(model, prompt_tokens: torch.Tensor, n_new: int) -> torch.Tensor:
    """Literal greedy decoding, one token at a time."""
    seq = prompt_tokens
    for _ in range(n_new):
        nxt = model.logits(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, prompt_tokens.shape[1]:]


def test_evaluate_equals_greedy_decoding(model, prompts):
    res = evaluate(model, prompts, batch_size=7, progress=False)
    tok = model.tokenizer
    answers = [tok(a, add_special_tokens=False)["input_ids"] for a in prompts.answers]
    prompt_tokens = model.to_tokens(list(prompts.prompts))
    decoded = _greedy(model, prompt_tokens, len(answers[0]))
    exact = (decoded == torch.tensor(answers)).all(-1).numpy().astype(float)
    np.testing.assert_array_equal(res.exact.values, exact)
    assert res.values.dims == ("prompt", "digit")
    assert res.values.sizes == {"prompt": 24, "digit": 3}
    assert res.accuracy == pytest.approx(exact.mean())


def test_evaluate_per_class_groups_by_complexity(model, prompts):
    res = evaluate(model, prompts, progress=False)
    classes = prompts.frame["complexity"].astype(str).to_numpy()
    for cls, acc in res.per_class.items():
        assert acc == pytest.approx(res.exact.values[classes == cls].mean())


def test_lens_last_depth_is_the_models_own_output(model, prompts):
    lens = logit_lens(model, prompts, progress=False)
    tokens = model.to_tokens([p + a for p, a in zip(prompts.prompts, prompts.answers)])
    probs = torch.softmax(model.logits(tokens).double(), -1)[:, :-1]
    expected = probs.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1).numpy()
    got = lens.values.sel(layer=model.shape.n_layers).transpose("prompt", "pos").values
    np.testing.assert_allclose(got, expected, atol=1e-5)
    top1 = probs.argmax(-1).numpy()
    ranks = lens.extras["rank"].sel(layer=model.shape.n_layers).transpose("prompt", "pos").values
    np.testing.assert_array_equal(ranks == 0, top1 == tokens[:, 1:].numpy())


def test_lens_depth_zero_reads_the_embeddings(model, prompts, tiny_hf_dirs):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(tiny_hf_dirs["gpt2"], use_safetensors=True).eval()
    lens = logit_lens(model, prompts[:4], progress=False)
    tokens = model.to_tokens([p + a for p, a in zip(prompts.prompts[:4], prompts.answers[:4])])
    with torch.no_grad():
        resid = hf.transformer.wte(tokens) + hf.transformer.wpe(torch.arange(tokens.shape[1]))
        probs = torch.softmax(hf.lm_head(hf.transformer.ln_f(resid)).double(), -1)[:, :-1]
    expected = probs.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1).numpy()
    np.testing.assert_allclose(lens.values.sel(layer=0).transpose("prompt", "pos").values, expected, atol=1e-5)
    assert bool(lens.values.coords["is_answer"].values[-3:].all())
    assert not bool(lens.values.coords["is_answer"].values[:-3].any())
