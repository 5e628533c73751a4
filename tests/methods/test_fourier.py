"""Fourier methods: bases, planted frequencies, and the measured numbers of the zoo models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arithinterp.errors import MethodError
from arithinterp.methods.fourier import (
    DIGIT_BASIS_LABELS,
    KeyFrequencyResult,
    activation_spectrum,
    basis_freqs,
    digit_basis,
    embedding_spectrum,
    fourier_basis,
    fourier_basis_labels,
    fourier_spectrum,
    gini,
    head_key_frequencies,
    key_frequencies,
    key_frequencies_from_activations,
    modadd_tokens,
)
from arithinterp.models import Site, load_model


@pytest.mark.parametrize("p", [10, 23, 113])
def test_fourier_basis_is_orthonormal_with_labels(p: int) -> None:
    basis = fourier_basis(p)
    assert basis.shape == (p, p)
    torch.testing.assert_close(basis @ basis.T, torch.eye(p, dtype=torch.float64))
    labels = fourier_basis_labels(p)
    assert len(labels) == p and labels[:3] == ["const", "cos 1", "sin 1"]
    assert basis_freqs(p).max() == p // 2
    n = torch.arange(p, dtype=torch.float64)
    k = 3
    row = basis[labels.index(f"cos {k}")]
    torch.testing.assert_close(row / row.norm(), torch.cos(2 * math.pi * k * n / p) / math.sqrt(p / 2))
    if p % 2 == 0:
        assert labels[-1] == f"cos {p // 2}"


def test_digit_basis() -> None:
    basis = digit_basis()
    assert basis.shape == (6, 10) and len(DIGIT_BASIS_LABELS) == 6
    torch.testing.assert_close(basis @ basis.T, torch.eye(6, dtype=torch.float64))
    n = torch.arange(10, dtype=torch.float64)
    torch.testing.assert_close(basis[-1], (-1.0) ** n / math.sqrt(10))
    torch.testing.assert_close(basis[3], torch.cos(2 * math.pi * n / 5) / math.sqrt(5))
    assert torch.all(basis[0] > 0)


def _planted_neurons(p: int, freqs: list[int], rng: np.random.Generator) -> torch.Tensor:
    a = np.arange(p)[:, None]
    b = np.arange(p)[None, :]
    cols = []
    for k in freqs:
        phase = rng.uniform(0, 2 * np.pi)
        cols.append(rng.uniform(0.5, 2) * np.cos(2 * np.pi * k * (a + b) / p + phase) + rng.normal())
    return torch.as_tensor(np.stack(cols, axis=-1))


def test_key_frequencies_recover_planted_neurons() -> None:
    rng = np.random.default_rng(0)
    p = 23
    planted = [2, 2, 5, 5, 5, 9, 11]
    acts = _planted_neurons(p, planted, rng)
    noise = torch.as_tensor(rng.normal(size=(p, p, 3)))
    res = key_frequencies_from_activations(torch.cat([acts, noise], dim=-1), threshold=0.85)
    np.testing.assert_allclose(res.values.values[: len(planted)], 1.0, atol=1e-12)
    assert list(res.extras["key_freq"].values[: len(planted)]) == planted
    assert not res.extras["clustered"].values[len(planted) :].any()
    assert res.counts == {5: 3, 2: 2, 9: 1, 11: 1}
    assert res.key_freqs == [2, 5, 9, 11]
    assert res.values.dims == ("neuron",)


def test_head_key_frequencies_recover_planted_heads() -> None:
    """A head whose write is a pure cos(2πk(a+b)/p) along one direction of d_model has key
    frequency k with all of its variance explained; a head writing two frequencies along
    two directions has the stronger one, explaining its share of the variance; a head
    writing noise is not clustered."""
    rng = np.random.default_rng(1)
    p, d_model = 23, 8
    a, b = np.arange(p)[:, None], np.arange(p)[None, :]
    def wave(k):
        return np.cos(2 * np.pi * k * (a + b) / p)
    u, v = rng.normal(size=d_model), rng.normal(size=d_model)
    u, v = u / np.linalg.norm(u), v - (v @ u) * u
    v = v / np.linalg.norm(v)
    heads = np.stack([
        wave(3)[..., None] * u + rng.normal(size=d_model),  # pure k = 3, plus a constant bias
        2 * wave(7)[..., None] * u + wave(4)[..., None] * v,  # k = 7 carries 4/5 of the variance
        rng.normal(size=(p, p, d_model)),  # noise
    ], axis=2)
    writes = {0: torch.as_tensor(heads), 2: torch.as_tensor(heads[:, :, ::-1].copy())}
    res = head_key_frequencies(writes, threshold=0.85)
    assert res.values.dims == ("layer", "head")
    assert res.values.coords["layer"].values.tolist() == [0, 2]
    np.testing.assert_array_equal(res.extras["key_freq"].sel(layer=0).values[:2], [3, 7])
    np.testing.assert_allclose(res.values.sel(layer=0, head=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(res.values.sel(layer=0, head=1), 0.8, atol=1e-12)
    assert res.extras["clustered"].sel(layer=0).values.tolist() == [True, False, False]
    assert res.extras["key_freq"].sel(layer=2, head=2) == 3  # the reversed heads
    assert res.meta.options["p"] == p
    heatmap = res.plot().data[0]  # layer x head, annotated with each head's key frequency
    np.testing.assert_array_equal(np.asarray(heatmap.z), res.values.transpose("layer", "head").values)
    assert heatmap.text[-1][2] == "k=3" and heatmap.y[-1] == "L2" and heatmap.x[1] == "H1"
    with pytest.raises(MethodError, match="p, p, head, d_model"):
        head_key_frequencies({0: torch.zeros(p, p, d_model)})


def test_fourier_spectrum_recovers_planted_embedding_frequencies() -> None:
    rng = np.random.default_rng(1)
    n, d = 100, 16
    x = np.arange(n)[:, None]
    emb = np.zeros((n, d))
    weights = {1: 1.0, 10: 3.0, 50: 2.0}  # periods 100, 10, 2
    for k, w in weights.items():
        directions = rng.normal(size=(2, d))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        emb += w * np.cos(2 * np.pi * k * x / n) * directions[0]
        emb += w * np.sin(2 * np.pi * k * x / n) * directions[1] * (k != 50)
    res = fourier_spectrum(emb + 5.0)
    frac = res.values
    assert set(frac.coords["freq"].values[frac.values > 1e-9]) == set(weights)
    np.testing.assert_allclose(float(frac.sum()), 1.0)
    # Power: w² (n/2) per cos or sin row, w² n for the lone cos at k = n/2: 9 : 4 : 1.
    top = res.top_periods(3)
    assert [round(t) for t, _ in top] == [10, 2, 100]
    np.testing.assert_allclose([f for _, f in top], [9 / 14, 4 / 14, 1 / 14])
    assert res.gini > 0.9
    uniform = fourier_spectrum(rng.normal(size=(n, 64)))
    assert uniform.gini < 0.4
    assert gini(np.ones(5)) == 0.0


@pytest.fixture(scope="module")
def modadd():
    return load_model("zoo:modadd-113")


@pytest.fixture(scope="module")
def modadd_keys(modadd) -> KeyFrequencyResult:
    return key_frequencies(modadd)


def test_key_frequencies_on_zoo_modadd(modadd_keys: KeyFrequencyResult) -> None:
    res = modadd_keys
    print(f"\nmodadd-113 key frequencies: {res.counts}; clustered {res.clustered_fraction:.3f}")
    assert res.values.sizes == {"neuron": 512}
    # METHODS §5 (Nanda et al. 2023): 3-7 key frequencies, >= 80% of neurons clustered
    # (explained fraction >= 0.85). Measured on the shipped model (step 20,200, after clean-up):
    # 4 frequencies {53: 180, 45: 158, 21: 80, 26: 64 neurons}, 482/512 = 94% clustered.
    assert 3 <= len(res.key_freqs) <= 7
    assert res.clustered_fraction >= 0.8
    assert sorted(res.key_freqs) == [21, 26, 45, 53]


def test_spectra_on_zoo_models(modadd, modadd_keys) -> None:
    grid = activation_spectrum(modadd, Site("mlp_post", 0, pos=-1), modadd_tokens())
    top = [round(113 / t) for t, _ in grid.top_periods(len(modadd_keys.key_freqs))]
    assert set(top) == set(modadd_keys.key_freqs)
    assert float(grid.values.sum()) <= 1 + 1e-9
    one_d = activation_spectrum(modadd, Site("resid_pre", 0, pos=0), modadd_tokens()[:, 0])
    embed = embedding_spectrum(modadd, range(113))
    # The residual stream at position 0 is the embedding plus a constant position vector.
    np.testing.assert_allclose(one_d.values.values, embed.values.values, atol=1e-6)
    print(f"\nmodadd-113 W_E top periods {embed.top_periods(6)} gini {embed.gini:.2f}")

    add = load_model("zoo:add-2d-tok")
    for matrix in ("W_E", "W_U"):
        spec = embedding_spectrum(add, range(199 if matrix == "W_U" else 100), matrix=matrix)
        print(f"add-2d-tok {matrix} top periods", [(round(t, 2), round(f, 3)) for t, f in spec.top_periods(6)])
        assert spec.values.sum() == pytest.approx(1.0)


def test_add_2d_tok_number_embeddings_use_their_own_periods() -> None:
    """METHODS §3/§4: report which periods zoo:add-2d-tok's number embeddings use.

    Measured (fraction of variance per frequency, numbers in numeric order):

    - W_E over the operands 0..99: k = 35 (period 2.86) 0.211, k = 3 (33.3) 0.153,
      k = 4 (25) 0.144, k = 2 (50) 0.104, then k = 18 (5.56), k = 5 (20); Gini 0.48.
    - W_U over the answers 0..198: k = 35 (period 5.69) 0.159, k = 70 (2.84) 0.130,
      then k = 7, 8, 6, 9 (periods 28.4, 24.9, 33.2, 22.1); Gini 0.50.

    Both matrices use a period of about 2.85 plus slow (magnitude) components of period
    20-50; the periods 2, 5 and 10 of pre-trained LLMs (Zhou et al.; Kantamneni & Tegmark)
    carry under 0.5% each. A from-scratch model need not use them (METHODS §3).
    """
    add = load_model("zoo:add-2d-tok")
    emb = embedding_spectrum(add, range(100))
    top = [int(k) for k in emb.values.freq.values[np.argsort(-emb.values.values)[:4]]]
    assert top == [35, 3, 4, 2]
    np.testing.assert_allclose([p for p, _ in emb.top_periods(4)], [100 / 35, 100 / 3, 25.0, 50.0])
    standard = emb.values.sel(freq=[50, 20, 10])  # periods 2, 5, 10
    assert float(standard.max()) < 0.005
    unemb = embedding_spectrum(add, range(199), matrix="W_U")
    top_u = [int(k) for k in unemb.values.freq.values[np.argsort(-unemb.values.values)[:2]]]
    assert top_u == [35, 70]  # periods 5.69 and 2.84
    assert abs(unemb.top_periods(2)[1][0] - emb.top_periods(1)[0][0]) < 0.05  # the shared ~2.85
