"""Bad options to the analysis methods raise ArithInterpError subclasses (MethodError) that say
what was wrong and what is valid, before any forward pass."""

from __future__ import annotations

import pytest
import torch

from arithinterp import ArithInterpError, load_model
from arithinterp.errors import MethodError
from arithinterp.methods import fourier_basis, fourier_spectrum, logit_lens, patch_activations
from arithinterp.methods.fourier import key_frequencies_from_activations
from arithinterp.methods.helix import filter_bands
from arithinterp.tasks import TaskSpec, generate, make_pairs


@pytest.mark.parametrize(("call", "message"), [
    (lambda: fourier_basis(1), r"p must be >= 2, got 1"),
    (lambda: fourier_spectrum(torch.zeros(1)), r"values must be \[N\] or \[N, d\] with N >= 2"),
    (lambda: key_frequencies_from_activations(torch.zeros(3, 4, 2)), r"must be \[p, p, neuron\]"),
    (lambda: filter_bands(20, cutoff_period=0), r"cutoff_period must be > 0"),
])
def test_pure_functions_reject_bad_options(call, message) -> None:
    with pytest.raises(MethodError, match=message) as info:
        call()
    assert isinstance(info.value, ArithInterpError) and isinstance(info.value, ValueError)


def test_model_methods_reject_bad_options_before_running(tiny_hf_dirs, monkeypatch) -> None:
    model = load_model(str(tiny_hf_dirs["gpt2"]))
    prompts = generate(TaskSpec(operation="add", digits=2, format="fixed", n=4, seed=0))
    calls = []
    monkeypatch.setattr(model.backend, "run", lambda *a, **k: calls.append(1))
    with pytest.raises(MethodError, match="k must be an int >= 1"):
        logit_lens(model, prompts, k=0, progress=False)
    with pytest.raises(MethodError, match="direction must be 'denoise' or 'noise'"):
        patch_activations(model, make_pairs(prompts, "operand_a"), direction="sideways", progress=False)
    with pytest.raises(MethodError, match="unknown metric 'accuracy_ish'; valid: "):
        patch_activations(model, make_pairs(prompts, "operand_a"), metric="accuracy_ish", progress=False)
    assert calls == []
