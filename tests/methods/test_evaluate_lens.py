"""evaluate and logit_lens against literal computations on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import TokenizationError
from arithinterp.methods import evaluate, logit_lens, number_lens
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, single_token_id, tokenize


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


# ---- the lens over number tokens (number-level tokenizers) ---------------------------------


@pytest.fixture(scope="module")
def tok_model():
    return load_model("zoo:add-2d-tok")


@pytest.fixture(scope="module")
def tok_prompts():
    return generate(TaskSpec(operation="add", operand_range=(0, 99), format="plain", n=300, seed=1))


def test_number_lens_final_depth_argmax_is_the_models_answer(tok_model, tok_prompts):
    res = number_lens(tok_model, tok_prompts, progress=False)
    assert res.values.dims == ("prompt", "layer", "token")
    assert res.values.sizes == {"prompt": 300, "layer": 2, "token": 199}
    np.testing.assert_array_equal(res.values.coords["token"].values, np.arange(199))
    final = res.values.sel(layer=tok_model.shape.n_layers)
    answers = np.array([int(a) for a in tok_prompts.answers])
    assert (final.idxmax("token").values == answers).mean() >= 0.99
    assert ((res.extras["answer_rank"].sel(layer=1) == 0).values == (final.idxmax("token").values == answers)).all()


def test_number_lens_is_the_full_softmax_renormalised_over_numbers(tok_model, tok_prompts):
    prompts = tok_prompts[:40]
    res = number_lens(tok_model, prompts, progress=False)
    tokens = tokenize(prompts, tok_model.tokenizer, answer="single").tokens
    ids = [single_token_id(tok_model.tokenizer, str(n)) for n in range(199)]
    full = torch.softmax(tok_model.logits(tokens[:, :-1])[:, -1].double(), -1)
    expected = (full[:, ids] / full[:, ids].sum(-1, keepdim=True)).numpy()
    got = res.probs.sel(layer=tok_model.shape.n_layers).transpose("prompt", "token").values
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)
    # the logit lens' restricted read at the answer position is the same number
    lens = logit_lens(tok_model, prompts, numbers=True, progress=False)
    np.testing.assert_allclose(
        lens.extras["number_prob"].isel(pos=-1).transpose("prompt", "layer").values,
        res.extras["answer_prob"].transpose("prompt", "layer").values, rtol=1e-12,
    )
    answer = np.array([int(a) for a in prompts.answers])
    np.testing.assert_allclose(
        res.extras["answer_prob"].sel(layer=1).values, got[np.arange(40), answer], rtol=1e-12
    )


def test_number_lens_explicit_numbers_and_errors(tok_model, tok_prompts, model, prompts):
    sub = tok_prompts[:20]
    keep = sorted({int(a) for a in sub.answers} | {0, 150})
    res = number_lens(tok_model, sub, numbers=keep, progress=False)
    assert list(res.values.coords["token"].values) == keep
    with pytest.raises(TokenizationError, match="not among"):
        number_lens(tok_model, sub, numbers=[0, 1, 2], progress=False)
    with pytest.raises(TokenizationError, match="number-level tokenizer"):
        logit_lens(model, prompts, numbers=True, progress=False)
    with pytest.raises(TokenizationError):
        number_lens(tok_model, sub, numbers=[0, 500], progress=False)
