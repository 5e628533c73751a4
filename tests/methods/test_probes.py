"""The linear probe estimator: planted features, a scikit-learn oracle, chunking, circular
probes and early errors. The sweep over a model is tested in test_probe_sweep.py."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from arithinterp.methods import LinearProbe
from arithinterp.methods.probes import ProbeError

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _problems(n_sites=3, n_pos=4, n=400, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_sites, n_pos, n, d)), rng


def test_planted_linear_feature_is_found_only_where_planted():
    X, rng = _problems()
    y = rng.integers(0, 2, X.shape[2])
    direction = rng.normal(size=X.shape[-1])
    X[1, 2] += 2.0 * np.outer(2 * y - 1, direction / np.linalg.norm(direction))
    train, test = slice(0, 300), slice(300, None)
    probe = LinearProbe("logistic").fit(X[..., train, :], y[train])
    acc = probe.score(X[..., test, :], y[test])
    assert acc.shape == (3, 4)
    assert probe.coef_.shape == (3, 4, 1, 16) and list(probe.classes_) == [0, 1]
    assert isinstance(probe.coef_, np.ndarray) and probe.intercept_.shape == (3, 4, 1)
    assert acc[1, 2] >= 0.97
    others = np.delete(acc.ravel(), 1 * 4 + 2)
    assert others.max() < 0.66 and abs(others.mean() - 0.5) < 0.06
    ridge = LinearProbe("ridge").fit(X[..., train, :], y[train].astype(float))
    r2 = ridge.score(X[..., test, :], y[test].astype(float))
    assert r2[1, 2] > 0.7 and np.delete(r2.ravel(), 6).max() < 0.1


def _sklearn_loop(X, y, train, test, kind, l2):
    """The oracle: one scikit-learn fit per problem, features standardised on train."""
    out = np.empty(X.shape[:2])
    n = len(train)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            scaler = StandardScaler().fit(X[i, j, train])
            Xtr, Xte = scaler.transform(X[i, j, train]), scaler.transform(X[i, j, test])
            if kind == "logistic":
                est = LogisticRegression(C=1 / (l2 * n), tol=1e-8, max_iter=10_000).fit(Xtr, y[train])
            else:
                est = Ridge(alpha=l2 * n).fit(Xtr, y[train])
            out[i, j] = est.score(Xte, y[test])
    return out


@pytest.mark.parametrize(("kind", "n_classes"), [("logistic", 2), ("logistic", 3), ("ridge", None)])
def test_batched_probes_match_a_sklearn_loop(kind, n_classes):
    """Binary logistic fits by Newton, multiclass by L-BFGS, ridge in closed form."""
    X, rng = _problems(n_sites=2, n_pos=3, n=800, d=12, seed=1)
    w = rng.normal(size=(2, 3, 12)) * np.array([0.2, 0.5, 1.0])[None, :, None]
    z = np.einsum("spnd,spd->spn", X, w).sum((0, 1)) + 0.5 * rng.normal(size=800)
    cuts = np.quantile(z, np.arange(1, n_classes) / n_classes) if n_classes else None
    y = np.digitize(z, cuts) if kind == "logistic" else z
    train, test = np.arange(600), np.arange(600, 800)
    l2 = 1e-2
    ours = LinearProbe(kind, l2=l2).fit(X[:, :, train], y[train]).score(X[:, :, test], y[test])
    oracle = _sklearn_loop(X, y, train, test, kind, l2)
    print(f"{kind}: ours {np.round(ours, 3).tolist()} sklearn {np.round(oracle, 3).tolist()}")
    assert np.abs(ours - oracle).max() <= 0.01 + 1e-9  # within one accuracy point
    assert oracle.max() - oracle.min() > 0.05, "the problems should differ in difficulty"


def test_chunked_newton_matches_sklearn_and_does_not_depend_on_chunking(monkeypatch):
    """Wider problems (d = 40) split over several chunks: same held-out accuracy as the
    converged scikit-learn loop, and the same weights whatever the chunk size."""
    import arithinterp.methods.ridge as ridge

    X, rng = _problems(n_sites=3, n_pos=4, n=700, d=40, seed=4)
    w = rng.normal(size=(3, 4, 40)) * rng.uniform(0.05, 0.6, size=(3, 4, 1))
    y = (np.einsum("spnd,spd->spn", X, w).sum((0, 1)) + rng.normal(size=700) > 0).astype(np.int64)
    train, test = np.arange(500), np.arange(500, 700)
    whole = LinearProbe(l2=1e-2).fit(X[:, :, train], y[train])
    monkeypatch.setattr(ridge, "_CHUNK_BYTES", 8 * 500 * 41 * 5)  # 5 problems a chunk
    assert ridge.chunk_size(500, 40) == 5
    chunked = LinearProbe(l2=1e-2).fit(X[:, :, train], y[train])
    np.testing.assert_allclose(chunked.coef_, whole.coef_, rtol=1e-7, atol=1e-9)
    ours = chunked.score(X[:, :, test], y[test])
    oracle = _sklearn_loop(X, y, train, test, "logistic", 1e-2)
    assert np.abs(ours - oracle).max() <= 0.01 + 1e-9
    assert chunked.n_hessians_ < 5 * 12, "lagged Hessians: fewer than 5 per problem"


def test_probe_is_an_estimator_with_early_errors():
    probe = LinearProbe("ridge", l2=0.5)
    assert probe.get_params()["l2"] == 0.5 and not hasattr(probe, "coef_")
    with pytest.raises(ProbeError, match="not fitted"):
        probe.predict(np.zeros((3, 2)))
    with pytest.raises(ProbeError, match="valid kinds"):
        LinearProbe("svm").fit(np.zeros((4, 2)), np.arange(4))
    with pytest.raises(ProbeError, match="period"):
        LinearProbe("circular").fit(np.zeros((4, 2)), np.arange(4))


def test_circular_probe_decodes_residues_from_a_planted_circle():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 100, 500)
    angle = 2 * np.pi * x / 10
    X = np.concatenate([np.stack([np.cos(angle), np.sin(angle)], 1), rng.normal(size=(500, 6))], 1)
    X = X + 0.05 * rng.normal(size=X.shape)
    for period, expected in [(10, 0.95), (5, 0.95)]:
        probe = LinearProbe("circular", period=period).fit(X[:400], x[:400])
        acc = probe.score(X[400:], x[400:])
        # mod 5 is a frequency-2 circle, not linear in the mod-10 features: not decodable
        assert (acc >= expected) if period == 10 else (acc < 0.5)


def _sklearn_ridge(X, y, l2):
    """scikit-learn's StandardScaler + Ridge on one problem, mapped to the input space."""
    scaler = StandardScaler().fit(X)
    est = Ridge(alpha=l2 * len(X)).fit(scaler.transform(X), y)
    coef = est.coef_ / scaler.scale_
    return coef, est.intercept_ - coef @ scaler.mean_, scaler


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ridge_equals_sklearn_to_rounding_over_chunks(monkeypatch, dtype):
    """The folded Gram solve is scikit-learn's fit to float64 rounding: features far from zero
    (mean 1e4 standard deviations away), of very different scales, and constant; a target per
    problem; several chunks of several problems."""
    import arithinterp.methods.ridge as ridge

    rng = np.random.default_rng(5)
    X = rng.normal(size=(2, 3, 300, 8)) * np.geomspace(1e-3, 1e2, 8) + np.r_[1e4, 0, -50, 0, 0, 0, 0, 3]
    X[1, 2, :, 3] = 7.0  # a constant feature
    X = X.astype(dtype)
    y = np.einsum("spnd,d->spn", X - X.mean(2, keepdims=True), rng.normal(size=8) / np.geomspace(1e-3, 1e2, 8))
    y += rng.normal(size=y.shape)
    monkeypatch.setattr(ridge, "_CHUNK_BYTES", 8 * 300 * 9 * 4)  # 4 problems a chunk: 2 chunks
    probe = LinearProbe("ridge", l2=1e-2).fit(X, y)
    for i in range(2):
        for j in range(3):
            coef, intercept, scaler = _sklearn_ridge(X[i, j].astype(np.float64), y[i, j], 1e-2)
            np.testing.assert_allclose(probe.coef_[i, j], coef, rtol=1e-9, atol=1e-12 * np.abs(coef).max())
            np.testing.assert_allclose(probe.intercept_[i, j], intercept, rtol=1e-9)
            np.testing.assert_allclose(probe.mean_[i, j], scaler.mean_, rtol=1e-12)
            np.testing.assert_allclose(probe.scale_[i, j], scaler.scale_, rtol=1e-9)


def test_ridge_targets_share_one_factorisation():
    """A circular probe's two targets (cos, sin) equal two separate ridge fits; with l2 = 0
    and a constant feature the solve still factors (jitter) and matches least squares."""
    rng = np.random.default_rng(6)
    x = rng.integers(0, 100, 400)
    X = rng.normal(size=(3, 400, 5)) + np.cos(2 * np.pi * x / 10)[:, None]
    circ = LinearProbe("circular", period=10, l2=1e-2).fit(X, x)
    angle = 2 * np.pi * x / 10
    for j, target in enumerate([np.cos(angle), np.sin(angle)]):
        ridge = LinearProbe("ridge", l2=1e-2).fit(X, target)
        np.testing.assert_allclose(circ.coef_[:, j], ridge.coef_, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(circ.intercept_[:, j], ridge.intercept_, rtol=1e-10, atol=1e-13)
    X[1, :, 2] = 3.0
    pred = LinearProbe("ridge", l2=0.0).fit(X, np.cos(angle)).predict(X)
    design = np.concatenate([X[1], np.ones((400, 1))], 1)
    ols = design @ np.linalg.lstsq(design, np.cos(angle), rcond=None)[0]
    np.testing.assert_allclose(pred[1], ols, atol=1e-6)


def test_ridge_targets_share_one_factorisation_and_equal_single_fits():
    """fit_ridge_targets: each target's probe equals its own LinearProbe fit and the
    scikit-learn loop, whether the target is shared by every problem or per problem."""
    from arithinterp.methods.probes import fit_ridge_targets

    X, rng = _problems(n_sites=2, n_pos=3, n=300, d=12, seed=7)
    X = X * rng.uniform(0.1, 10, size=12) + rng.normal(size=12) * 50  # uneven scales, far-off means
    train, test = np.arange(220), np.arange(220, 300)
    shared = X[0, 0] @ rng.normal(size=12) + rng.normal(size=300)
    per_problem = np.einsum("spnd,spd->spn", X, rng.normal(size=(2, 3, 12))) + rng.normal(size=(2, 3, 300))
    targets = [shared, per_problem, (shared > np.median(shared)).astype(np.int64)]
    probes = fit_ridge_targets(X[:, :, train], [t[..., train] for t in targets], l2=1e-2)
    assert len(probes) == 3
    scores = []
    for probe, target in zip(probes, targets):
        single = LinearProbe("ridge", l2=1e-2).fit(X[:, :, train], target[..., train])
        np.testing.assert_allclose(probe.coef_, single.coef_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(probe.intercept_, single.intercept_, rtol=1e-9, atol=1e-9)
        ours = probe.score(X[:, :, test], target[..., test])
        if target.ndim == 1:
            np.testing.assert_allclose(ours, _sklearn_loop(X, target, train, test, "ridge", 1e-2), atol=1e-9)
        scores.append(ours)
    # the shared target is a function of problem (0, 0) only; each per-problem target of its own
    assert scores[0][0, 0] > 0.9 and np.delete(scores[0].ravel(), 0).max() < 0.2
    assert scores[1].min() > 0.9


def test_ridge_targets_reject_bad_input():
    from arithinterp.methods.probes import fit_ridge_targets

    X = np.zeros((2, 50, 3))
    with pytest.raises(ProbeError, match="at least one target"):
        fit_ridge_targets(X, [])
    with pytest.raises(ProbeError, match="target 1 has shape"):
        fit_ridge_targets(X, [np.zeros(50), np.zeros(49)])
    with pytest.raises(ProbeError, match="l2 must be"):
        fit_ridge_targets(X, [np.zeros(50)], l2=-1)
