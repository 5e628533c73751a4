"""bootstrap_ci: agrees with a literal loop, covers at the nominal rate, is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from arithinterp.errors import ResultError
from arithinterp.results import EstimateTable, ResultMeta, bootstrap_ci


def literal_bootstrap(samples: np.ndarray, n_boot: int, alpha: float, seed: int):
    """The textbook loop over replicates, drawing the same indices as the vectorised code."""
    rng = np.random.default_rng(seed)
    n = samples.shape[0]
    draws = rng.integers(0, n, size=(n_boot, n))
    means = np.stack([samples[row].mean(axis=0) for row in draws])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)
    return samples.mean(axis=0), low, high


def test_matches_the_literal_loop() -> None:
    samples = np.random.default_rng(5).normal(size=(40, 3, 2))
    got = bootstrap_ci(samples, n_boot=300, alpha=0.1, seed=7)
    want = literal_bootstrap(samples, 300, 0.1, 7)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_covers_the_true_mean_at_roughly_the_nominal_rate() -> None:
    # 2,000 independent experiments of 60 prompts each, bootstrapped in one call.
    rng = np.random.default_rng(11)
    true_mean = 1.5
    samples = rng.exponential(true_mean, size=(60, 2000))
    _, low, high = bootstrap_ci(samples, axis=0, n_boot=1000, alpha=0.05, seed=0)
    coverage = np.mean((low <= true_mean) & (true_mean <= high))
    # The percentile bootstrap under-covers a little on skewed data at n=60.
    assert 0.90 <= coverage <= 0.98, coverage
    _, low80, high80 = bootstrap_ci(samples, axis=0, n_boot=1000, alpha=0.2, seed=0)
    coverage80 = np.mean((low80 <= true_mean) & (true_mean <= high80))
    assert 0.74 <= coverage80 <= 0.86, coverage80
    assert np.all(high80 - low80 < high - low)


def test_is_deterministic_given_the_seed() -> None:
    samples = np.random.default_rng(1).normal(size=(25, 4))
    a = bootstrap_ci(samples, seed=3)
    b = bootstrap_ci(samples, seed=3)
    c = bootstrap_ci(samples, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])


def test_dataarray_keeps_other_dims_and_coords() -> None:
    samples = xr.DataArray(
        np.random.default_rng(2).normal(size=(3, 30)),
        dims=("layer", "prompt"),
        coords={
            "layer": [0, 1, 2],
            "layer_name": ("layer", ["a", "b", "c"]),
            "prompt": np.arange(30),
        },
    )
    mean, low, high = bootstrap_ci(samples, dim="prompt", n_boot=200)
    assert mean.dims == low.dims == high.dims == ("layer",)
    assert list(mean.coords["layer_name"].values) == ["a", "b", "c"]
    np.testing.assert_allclose(mean, samples.mean("prompt"))
    assert np.all(low < mean) and np.all(mean < high)
    np.testing.assert_array_equal(low, bootstrap_ci(samples.values, axis=1, n_boot=200)[1])


def test_nan_samples_are_ignored() -> None:
    clean = np.random.default_rng(3).normal(size=(20, 1))
    with_nan = np.vstack([clean, np.full((5, 1), np.nan)])
    mean, low, high = bootstrap_ci(with_nan, n_boot=500)
    assert np.isfinite([mean, low, high]).all()
    np.testing.assert_allclose(mean, clean.mean(axis=0))
    all_nan = bootstrap_ci(np.full((4, 2), np.nan), n_boot=50)
    assert np.isnan(np.stack(all_nan)).all()


def test_bad_arguments() -> None:
    with pytest.raises(ResultError, match="alpha"):
        bootstrap_ci(np.zeros(5), alpha=1.5)
    with pytest.raises(ResultError, match="n_boot"):
        bootstrap_ci(np.zeros(5), n_boot=0)
    with pytest.raises(ResultError, match="dim"):
        bootstrap_ci(xr.DataArray(np.zeros(5), dims="layer"))
    with pytest.raises(ResultError, match="zero samples"):
        bootstrap_ci(np.zeros((0, 3)))


def test_estimate_table_from_samples_records_the_interval() -> None:
    samples = xr.DataArray(np.arange(20.0).reshape(10, 2), dims=("prompt", "digit"), name="acc")
    est = EstimateTable.from_samples(samples, meta=ResultMeta(method="t"), n_boot=100, seed=1)
    assert est.metric == "acc" and est.dims == ("digit",)
    assert est.values.attrs == {"ci_level": 0.95, "n_boot": 100, "ci_seed": 1}
    assert est.extras["n"].values.tolist() == [10, 10]
    frame = est.to_frame()
    assert (frame["ci_low"] <= frame["acc"]).all() and (frame["acc"] <= frame["ci_high"]).all()
