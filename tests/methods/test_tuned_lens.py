"""The tuned lens on zoo:add-5d: it beats the logit lens, saves exactly, and is seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import ArithInterpError, ResultError
from arithinterp.methods import (
    LensKLResult,
    TunedLens,
    lens_kl,
    logit_lens,
    train_tuned_lens,
    tuned_lens,
)
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate


@pytest.fixture(scope="module")
def model():
    return load_model("zoo:add-5d")


@pytest.fixture(scope="module")
def train_prompts():
    return generate(TaskSpec(operation="add", digits=5, format="fixed", n=256, seed=1))


@pytest.fixture(scope="module")
def test_prompts():
    return generate(TaskSpec(operation="add", digits=5, format="fixed", n=96, seed=2))


@pytest.fixture(scope="module")
def lens(model, train_prompts):
    return train_tuned_lens(model, train_prompts, steps=200, seed=0, progress=False)


def test_tuned_lens_beats_the_logit_lens_at_every_depth(model, lens, test_prompts):
    kl = lens_kl(model, test_prompts, lens)
    assert isinstance(kl, LensKLResult)
    assert kl.values.dims == ("metric", "layer")
    assert list(kl.values.coords["metric"].values) == ["logit_lens", "tuned_lens"]
    logit, tuned = kl.values.sel(metric="logit_lens"), kl.values.sel(metric="tuned_lens")
    n = model.shape.n_layers
    # the last depth is the model's own output for both lenses
    assert float(logit.sel(layer=n)) == pytest.approx(0.0, abs=1e-9)
    assert float(tuned.sel(layer=n)) == pytest.approx(0.0, abs=1e-9)
    for depth in range(n):
        assert float(tuned.sel(layer=depth)) < float(logit.sel(layer=depth)), depth
    # training lowered its own loss
    assert lens.loss[-1] < 0.5 * lens.loss[0]


def test_last_translator_is_the_identity(model, lens, test_prompts):
    d = model.shape.d_model
    torch.testing.assert_close(lens.weight[-1], torch.eye(d), rtol=0, atol=0)
    assert not lens.bias[-1].any()
    plain = logit_lens(model, test_prompts[:16], progress=False)
    tuned = tuned_lens(model, test_prompts[:16], lens, progress=False)
    assert tuned.values.dims == plain.values.dims and tuned.values.sizes == plain.values.sizes
    np.testing.assert_allclose(
        tuned.values.sel(layer=model.shape.n_layers), plain.values.sel(layer=model.shape.n_layers),
        atol=1e-12,
    )
    assert tuned.meta.method == "tuned_lens"


def test_save_load_round_trip(model, lens, test_prompts, tmp_path):
    path = lens.save(tmp_path / "lens")
    assert sorted(p.name for p in path.iterdir()) == ["translators.safetensors", "tuned_lens.json"]
    back = TunedLens.load(path)
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    assert back.loss == lens.loss and back.meta == lens.meta
    a = tuned_lens(model, test_prompts[:16], lens, progress=False)
    b = tuned_lens(model, test_prompts[:16], back, progress=False)
    assert a.values.identical(b.values)
    with pytest.raises(ResultError):
        TunedLens.load(tmp_path)


def test_training_is_deterministic_given_the_seed(model, train_prompts):
    small = train_prompts[:64]
    a = train_tuned_lens(model, small, steps=15, seed=3, progress=False)
    b = train_tuned_lens(model, small, steps=15, seed=3, progress=False)
    c = train_tuned_lens(model, small, steps=15, batch_positions=64, seed=4, progress=False)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and a.loss == b.loss
    assert not torch.equal(a.weight, c.weight)
    assert a.meta.seed == 3


def test_lens_from_another_model_is_refused(lens, test_prompts):
    other = load_model("zoo:add-5d-1L")
    with pytest.raises(ArithInterpError, match="depths"):
        tuned_lens(other, test_prompts[:4], lens, progress=False)
