"""Weights come from safetensors only, on both backends, even with a pickle beside them; and
the loaded tokenizer knows the model's context length."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from arithinterp.errors import TokenizationError
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, tokenize


@pytest.fixture(scope="module")
def with_pickle(tiny_hf_dirs, tmp_path_factory):
    """The tiny GPT-2 with a ``pytorch_model.bin`` of other weights (all zeros) beside its
    ``model.safetensors``: loading the pickle would give a model whose embedding is zero."""
    folder = tmp_path_factory.mktemp("with_pickle") / "gpt2"
    shutil.copytree(tiny_hf_dirs["gpt2"], folder)
    zeros = {k: torch.zeros_like(v) for k, v in load_file(folder / "model.safetensors").items()}
    torch.save(zeros, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_safetensors_win_over_a_pickle_beside_them(with_pickle, backend):
    expected = load_file(with_pickle / "model.safetensors")["transformer.wte.weight"]
    model = load_model(str(with_pickle), backend)
    torch.testing.assert_close(model.weights().W_E.detach().cpu(), expected, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_loaded_tokenizer_refuses_prompts_longer_than_the_context(tiny_hf_dirs, backend):
    model = load_model(str(tiny_hf_dirs["gpt2"]), backend)
    assert model.tokenizer.model_max_length == model.shape.n_ctx == 32
    fits = generate(TaskSpec(operation="add", digits=5, format="fixed", n=4))
    assert tokenize(fits, model.tokenizer).tokens.shape[1] <= 32
    too_long = generate(TaskSpec(operation="add", digits=14, format="fixed", n=4))
    with pytest.raises(TokenizationError, match=r"prompt plus answer is 4\d tokens but the model's context holds 32"):
        tokenize(too_long, model.tokenizer)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_backends_never_fall_back_to_a_pickle(with_pickle, tmp_path, backend):
    """Below the directory check, each backend itself asks transformers for safetensors only:
    with nothing but the pickle it refuses instead of unpickling."""
    from arithinterp.errors import ModelLoadError
    from arithinterp.models.backends.nnsight_backend import NNsightBackend
    from arithinterp.models.backends.tl import TransformerLensBackend

    only_pickle = tmp_path / "only_pickle"
    shutil.copytree(with_pickle, only_pickle)
    (only_pickle / "model.safetensors").unlink()
    cls = TransformerLensBackend if backend == "transformer_lens" else NNsightBackend
    with pytest.raises(ModelLoadError, match="safetensors"):
        cls.from_pretrained(str(only_pickle))
