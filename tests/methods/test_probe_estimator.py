"""LinearProbe as a scikit-learn estimator: check_estimator, cross_val_score, numpy
directions equal to scikit-learn's, and the directions fit_probes returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from arithinterp.methods import LinearProbe, ProbeDirections, ProbeResult, fit_probes
from arithinterp.methods.probe_sweep import cache_resid, resid_sites, split_prompts
from arithinterp.methods.probes import ProbeError, ProbeNotFittedError
from arithinterp.models import load_model
from arithinterp.results import Result
from arithinterp.tasks import TaskSpec, generate, tokenize

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

#: The checks a circular probe cannot meet, with the reason (it is a classifier of residues).
CIRCULAR_EXPECTED_FAILURES = {
    "check_classifiers_classes": "a circular probe predicts residues x mod period of integer "
                                 "targets; string class labels have no residue",
}


@pytest.mark.parametrize("probe", [LinearProbe(), LinearProbe("ridge")], ids=repr)
def test_check_estimator_passes(probe):
    results = check_estimator(probe, on_skip=None)  # raises on the first failed check
    status = {r["check_name"]: r["status"] for r in results}
    # array API input is only checked with SCIPY_ARRAY_API=1 set before scipy loads
    assert {s for name, s in status.items() if name != "check_array_api_input"} == {"passed"}
    assert len(status) >= 45  # 52 results (49 distinct checks) for ridge, 55 for logistic


def test_check_estimator_circular_fails_only_the_documented_checks():
    results = check_estimator(LinearProbe("circular", period=3), on_skip=None,
                              expected_failed_checks=CIRCULAR_EXPECTED_FAILURES)
    failed = {r["check_name"] for r in results if r["status"] not in ("passed", "skipped")}
    assert failed == set(CIRCULAR_EXPECTED_FAILURES)


def _blobs(n=300, d=5, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + 5 + np.eye(classes, d)[y] * 1.5
    return X, y


def test_tags_and_cross_validation():
    assert is_classifier(LinearProbe()) and is_regressor(LinearProbe("ridge"))
    X, y = _blobs()
    scores = cross_val_score(LinearProbe(l2=1e-2), X, y, cv=5)
    oracle = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(
        C=1 / (1e-2 * 240), tol=1e-10, max_iter=10_000)), X, y, cv=5)
    assert scores.shape == (5,) and scores.dtype == float and scores.min() > 0.6
    np.testing.assert_allclose(scores, oracle, atol=1 / 60 + 1e-9)  # at most one test prompt apart
    grid = GridSearchCV(LinearProbe(), {"l2": [1e-3, 1e-1]}, cv=3).fit(X, y)
    assert grid.best_params_["l2"] in (1e-3, 1e-1) and isinstance(grid.best_estimator_, LinearProbe)
    assert clone(LinearProbe("ridge", l2=0.5)).get_params()["l2"] == 0.5


@pytest.mark.parametrize("classes", [2, 3])
def test_directions_are_numpy_and_equal_sklearns(classes):
    X, y = _blobs(classes=classes, seed=classes)
    l2 = 1e-2
    probe = LinearProbe(l2=l2, tol=1e-14).fit(X, y)
    scaler = StandardScaler().fit(X)
    ref = LogisticRegression(C=1 / (l2 * len(X)), tol=1e-12, max_iter=100_000).fit(scaler.transform(X), y)
    coef = ref.coef_ / scaler.scale_  # sklearn's directions in the input space
    intercept = ref.intercept_ - coef @ scaler.mean_
    assert isinstance(probe.coef_, np.ndarray) and isinstance(probe.intercept_, np.ndarray)
    if classes == 2:
        assert probe.coef_.shape == (1, 5)
        np.testing.assert_allclose(probe.coef_, coef, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(probe.intercept_, intercept, rtol=1e-4, atol=1e-5)
    else:  # softmax weights are defined up to a shift shared by the classes
        assert probe.coef_.shape == (3, 5)
        centred = probe.coef_ - probe.coef_.mean(0)
        np.testing.assert_allclose(centred, coef - coef.mean(0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(scaler.transform(X)), atol=1e-5)
    decision = probe.decision_function(X)
    np.testing.assert_allclose(decision, X @ probe.coef_.T[:, 0] + probe.intercept_[0] if classes == 2
                               else X @ probe.coef_.T + probe.intercept_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.exp(probe.predict_log_proba(X)), probe.predict_proba(X), atol=1e-12)


def test_batched_path_equals_one_problem_at_a_time():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2, 3, 200, 6))
    y = (X[..., 0].sum((0, 1)) + rng.normal(size=200) > 0).astype(int)
    for kind, target in (("logistic", y), ("ridge", X[0, 0, :, 1] + 0.1 * rng.normal(size=200))):
        batched = LinearProbe(kind).fit(torch.as_tensor(X), target)
        for i in range(2):
            for j in range(3):
                one = LinearProbe(kind).fit(X[i, j], target)
                np.testing.assert_allclose(batched.coef_[i, j], one.coef_, rtol=1e-6, atol=1e-9)
                np.testing.assert_allclose(batched.intercept_[i, j], one.intercept_, rtol=1e-6, atol=1e-9)
                np.testing.assert_allclose(batched.predict(X)[i, j], one.predict(X[i, j]), rtol=1e-9)
    assert batched.n_features_in_ == 6 and batched.coef_.shape == (2, 3, 6)


def test_errors_are_arithinterp_and_sklearn_errors():
    probe = LinearProbe()
    with pytest.raises(ProbeNotFittedError, match="not fitted"):
        probe.predict(np.zeros((2, 3)))
    probe.fit(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="expecting 4 features"):
        probe.predict(np.zeros((2, 3)))
    with pytest.raises(ProbeError, match="1 class"):
        LinearProbe().fit(np.eye(3), [1, 1, 1])
    assert not hasattr(LinearProbe("ridge"), "predict_proba")  # classifier methods only


@pytest.fixture(scope="module")
def model(tiny_hf_dirs):
    return load_model(str(tiny_hf_dirs["gpt2"]))


def test_fit_probes_returns_the_directions(model, tmp_path):
    prompts = generate(TaskSpec(operation="add", digits=2, format="fixed", n=96, seed=0))
    res = fit_probes(model, prompts, ["SC_0", "answer_digit_0"], positions=[-1, 2], control=False,
                     n_boot=5, seed=3, directions=True, progress=False)
    d = res.directions
    assert isinstance(d, ProbeDirections) and isinstance(d.values.values, np.ndarray)
    sites, labels = resid_sites(model)
    assert d.sizes == {"target": 2, "site": len(sites), "pos": 2,
                       "output": 1 + int(len(np.unique(prompts.frame["answer_digit_0"]))),
                       "feature": model.shape.d_model}
    assert list(d.values["pos"].values) == list(res.values["pos"].values)
    # The directions reproduce the held-out scores: decision = acts @ w + b.
    _, test = split_prompts(prompts, test_fraction=0.25, split="random", seed=3)
    tokens = tokenize(prompts, model.tokenizer, answer="multi").tokens
    acts = cache_resid(model, tokens, sites, list(res.values["pos"].values)).double().numpy()
    acts = acts[:, :, test]  # [site, pos, prompt, d]
    w = d.values.sel(target="SC_0", output="logit").values  # [site, pos, d]
    b = d.extras["intercept"].sel(target="SC_0", output="logit").values
    pred = (np.einsum("spnd,spd->spn", acts, w) + b[..., None] > 0).astype(int)
    truth = prompts.frame["SC_0"].to_numpy().astype(int)[test]
    np.testing.assert_allclose((pred == truth).mean(-1), res.values.sel(target="SC_0").values, atol=1e-12)
    digits = [str(c) for c in np.unique(prompts.frame["answer_digit_0"])]
    logits = np.einsum("spnd,spkd->spnk", acts, d.values.sel(target="answer_digit_0", output=digits).values)
    logits += d.extras["intercept"].sel(target="answer_digit_0", output=digits).values[:, :, None]
    acc = (np.array(digits)[logits.argmax(-1)].astype(int) == prompts.frame["answer_digit_0"].to_numpy()[test])
    np.testing.assert_allclose(acc.mean(-1), res.values.sel(target="answer_digit_0").values, atol=1e-12)
    # saved and loaded with the result; absent unless asked for
    assert Result.load(res.save(tmp_path / "probes")) == res
    assert ProbeResult.load(tmp_path / "probes").directions == d
    assert fit_probes(model, prompts, "SC_0", positions=[-1], control=False, n_boot=5,
                      progress=False).directions is None
