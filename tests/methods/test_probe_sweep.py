"""The probe sweep: control tasks, leak-free splits, the carry bits of the zoo addition model,
and the input-visibility mask (where a teacher-forced input already shows the digit a target
is about)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from arithinterp.methods import LinearProbe, ProbeResult, answer_visible, fit_probes
from arithinterp.methods.probe_controls import (
    control_columns,
    fit_type_control,
    type_control_labels,
)
from arithinterp.methods.probe_sweep import split_prompts
from arithinterp.methods.probes import ProbeError
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate
from arithinterp.zoo import zoo_path

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def add5():
    return load_model("zoo:add-5d")


@pytest.fixture(scope="module")
def add5_prompts():
    return generate(TaskSpec(operation="add", digits=5, format="fixed", n=1200, seed=0))


@pytest.fixture(scope="module")
def digit_tokenizer():
    """One token per character (the zoo's 5-digit addition tokenizer)."""
    return AutoTokenizer.from_pretrained(zoo_path("add-5d"))


@pytest.mark.parametrize("fmt", ["fixed", "fixed_reversed"])
def test_answer_digit_j_is_visible_once_its_character_is_in_the_input(digit_tokenizer, fmt):
    """Six answer digits, one token each: at the position predicting answer token ``i`` the
    input shows answer characters ``0..i-1``. Most significant first, ``answer_digit_j`` is
    character ``5 - j``; reversed, it is character ``j``. A target with no place never is."""
    prompts = generate(TaskSpec(operation="add", digits=5, format=fmt, n=50, seed=0))
    targets = [f"answer_digit_{j}" for j in range(6)] + ["SC_2", "operand_a"]
    mask = answer_visible(prompts, digit_tokenizer, targets, 6)
    i = np.arange(6)
    for j in range(6):
        char = j if fmt == "fixed_reversed" else 5 - j
        np.testing.assert_array_equal(mask[j], i > char, err_msg=f"answer_digit_{j}")
    # SC_2 is place 2, like answer_digit_2; operand_a names no place
    np.testing.assert_array_equal(mask[6], mask[2])
    assert not mask[7].any()


def test_control_task_gives_low_selectivity_on_a_random_target(add5, add5_prompts):
    prompts = add5_prompts[:600]
    noise = np.random.default_rng(5).integers(0, 2, len(prompts))
    targets = {"noise": noise, "SC_2": prompts.frame["SC_2"].to_numpy()}
    res = fit_probes(add5, prompts, targets, positions=range(11, 15), n_boot=50, progress=False)
    sel = res.extras["selectivity"].sel(target="noise")
    print("random target: max accuracy", float(res.values.sel(target="noise").max()),
          "max selectivity", float(sel.max()))
    assert float(res.values.sel(target="noise").max()) < 0.62
    # the noise target's control (random labels per operand pair, all unique) is at chance
    # too: selectivity is 0 up to sampling noise of 150 held-out prompts (one control draw
    # shared by all cells, sd ~0.04; ~0.06 more per cell)
    assert abs(float(sel.mean())) < 0.1 and float(sel.max()) < 0.2
    carry = res.extras["selectivity"].sel(target="SC_2", pos=13)
    print("SC_2 at pos 13: score", res.values.sel(target="SC_2", pos=13).values.round(2),
          "control", res.extras["control"].sel(target="SC_2", pos=13).values.round(2))
    assert float(carry.sel(site="L0 mid")) > 0.2  # after layer-0 attention: selective
    # noise is no function of a few digits: its input type is the operand pair, unique per prompt
    assert res.meta.extra["control_columns"] == {"noise": ["operand_a", "operand_b"],
                                                 "SC_2": ["a_digit_2", "b_digit_2"]}
    assert set(res.values.coords["score_kind"].values) == {"accuracy"}
    # the per-token control is memorisable: at digit positions it is decoded far above chance
    tok = fit_probes(add5, prompts, {"noise": noise}, positions=[13], control_by="token", n_boot=0,
                     progress=False)
    assert float(tok.extras["control"].min()) > 0.8


def test_control_columns_find_the_digits_a_target_depends_on():
    prompts = generate(TaskSpec(operation="add", digits=3, format="fixed", n=1500, seed=3))
    frame = prompts.frame
    assert control_columns(frame, frame["SC_1"].to_numpy()) == ["a_digit_1", "b_digit_1"]
    assert control_columns(frame, frame["a_digit_2"].to_numpy()) == ["a_digit_2"]
    assert control_columns(frame, frame["answer"].to_numpy()) == ["operand_a", "operand_b"]
    with pytest.raises(ProbeError, match="not columns"):
        fit_probes(None, prompts, ["SC_0"], control_by=["no_such_column"], progress=False)
    with pytest.raises(ProbeError, match="control_by"):
        fit_probes(None, prompts, ["SC_0"], control_by="words", progress=False)


def test_type_control_is_selective_for_a_planted_linear_feature():
    """Hewitt & Liang on synthetic data: types are digit pairs (a, b); the stream holds
    e(a) + f(b) plus a planted carry direction. The carry probe is near perfect; random
    labels per (a, b) type are not linear in the additive code, so selectivity is high."""
    rng = np.random.default_rng(7)
    n, d = 2000, 32
    a, b = rng.integers(0, 10, n), rng.integers(0, 10, n)
    carry = (a + b >= 10).astype(np.int64)
    e, f = rng.normal(size=(10, d)), rng.normal(size=(10, d))
    direction = rng.normal(size=d)
    X = e[a] + f[b] + 3.0 * np.outer(carry - 0.5, direction / np.linalg.norm(direction))
    X = (X + 0.3 * rng.normal(size=X.shape))[None]  # one problem
    types = a * 10 + b
    train, test = np.arange(1500), np.arange(1500, n)
    acc = LinearProbe().fit(X[:, train], carry[train]).score(X[:, test], carry[test])
    ctrl = fit_type_control(X[:, None, train], X[:, None, test], type_control_labels(carry, types, rng),
                             train, test, kind="logistic", period=None, l2=1e-3)
    print(f"planted carry: accuracy {acc[0]:.3f}, control {ctrl[0, 0]:.3f}")
    assert acc[0] >= 0.97
    assert ctrl[0, 0] < 0.8 and acc[0] - ctrl[0, 0] > 0.2
    # a control on types the probe can memorise (one-hot types) is learned: selectivity ~ 0
    onehot = np.eye(100)[types][None]
    memo = fit_type_control(onehot[:, None, train], onehot[:, None, test],
                             type_control_labels(carry, types, rng), train, test,
                             kind="logistic", period=None, l2=1e-3)
    assert memo[0, 0] > 0.95


def test_operand_split_leaks_no_operand():
    prompts = generate(TaskSpec(operation="add", digits=2, format="fixed", n=400, seed=1))
    train, test = split_prompts(prompts, test_fraction=0.25, split="operand", seed=0)
    a = prompts.frame["operand_a"].to_numpy()
    assert not set(a[train]) & set(a[test])
    assert len(a[train]) > len(set(a[train])), "operands repeat, so a random split would leak"
    assert 0.2 <= len(test) / len(prompts) <= 0.35
    assert sorted(np.concatenate([train, test])) == list(range(len(prompts)))
    rtrain, rtest = split_prompts(prompts, test_fraction=0.25, split="random", seed=0)
    assert set(a[rtrain]) & set(a[rtest])


def test_carry_bits_appear_after_layer0_attention_at_the_digit_they_feed(add5, add5_prompts):
    """Known answer on zoo:add-5d (prompt ``12345+67890=``, answer ``080235`` MSD first).

    Written answer digit k (k = 0..5) is column 5 - k and is predicted at position
    11 + k; the carry into column c is SC_{c-1}, so the position predicting digit k
    reads SC_{4-k} (k = 0..4; the units digit takes no carry). Measured on 1200
    prompts (900 train / 300 held out), held-out accuracy of SC_{4-k} at position 11+k:

        digit k  target  majority  L0 pre  L0 mid  L1 pre  L1 mid  L1 post
        0        SC_4    0.58      0.58    1.00    1.00    1.00    1.00
        1        SC_3    0.52      0.52    0.99    0.99    0.99    0.95
        2        SC_2    0.53      0.52    1.00    1.00    1.00    0.93
        3        SC_1    0.56      0.52    0.92    0.91    0.98    0.91
        4        SC_0    0.57      0.59    0.99    0.97    1.00    0.99

    The embeddings alone (L0 pre) sit at the majority baseline; one attention
    layer makes every carry decodable, SC_1 best after layer-1 attention.
    """
    targets = [f"SC_{4 - k}" for k in range(5)]
    res = fit_probes(add5, add5_prompts, targets, positions=range(11, 16), control=False,
                     n_boot=100, progress=False)
    assert isinstance(res, ProbeResult) and res.dims == ("target", "site", "pos")
    labels = list(res.values.coords["site"].values)
    assert labels == ["L0 pre", "L0 mid", "L1 pre", "L1 mid", "L1 post"]
    assert list(res.values.coords["layer"].values) == [0, 0, 1, 1, 2]
    for k, target in enumerate(targets):
        cell = res.values.sel(target=target, pos=11 + k)
        majority = float(res.extras["majority"].sel(target=target))
        print(target, f"pos {11 + k}", f"majority {majority:.2f}",
              " ".join(f"{lab} {v:.2f}" for lab, v in zip(labels, cell.values)))
        assert float(cell.isel(site=slice(1, None)).max()) >= 0.95
        assert float(cell.sel(site="L0 pre")) <= majority + 0.05
        lo, hi = (float(res.extras[e].sel(target=target, pos=11 + k).max()) for e in ("ci_low", "ci_high"))
        assert lo <= float(cell.max()) <= hi
    frame = res.to_frame()
    assert {"score", "ci_low", "ci_high", "majority", "selectivity"} <= set(frame.columns)
    fig = res.plot()
    scores = [t for t in fig.data if t.name != "masked"]
    assert [t.name for t in scores] == list(targets)
    # Cells whose teacher-forced input shows the target's digit are grey "masked" cells, not scores.
    masked = res.masked()
    assert sum(t.name == "masked" for t in fig.data) == int(masked.any(("site", "pos")).sum())
    for t, target in zip(scores, targets):
        hidden = masked.sel(target=target).transpose("site", "pos").values
        assert np.isnan(np.array(t.z, dtype=float)[hidden]).all()


def test_fit_probes_rejects_bad_requests_before_running(add5, add5_prompts):
    with pytest.raises(ProbeError, match="not columns"):
        fit_probes(add5, add5_prompts[:8], ["SC_9"], progress=False)
    with pytest.raises(ProbeError, match="valid splits"):
        fit_probes(add5, add5_prompts[:8], ["SC_0"], split="rows", progress=False)


def test_circular_targets_on_the_zoo_model_and_regression_mae(add5, add5_prompts):
    prompts = add5_prompts[:400]
    res = fit_probes(add5, prompts, ["a_digit_0"], kind="circular", periods=(2, 10),
                     positions=[4, 11], control=False, n_boot=20, progress=False)
    assert list(res.values.coords["target"].values) == ["a_digit_0 mod 2", "a_digit_0 mod 10"]
    ridge = fit_probes(add5, prompts, {"a": prompts.frame["operand_a"].to_numpy() / 1000.0},
                       positions=[11], control=False, n_boot=20, progress=False)
    assert str(ridge.values.coords["score_kind"].values[0]) == "r2"
    assert np.isfinite(ridge.extras["mae"].values).all()
    assert isinstance(LinearProbe().fit(np.eye(4), [0, 1, 0, 1]).coef_, np.ndarray)


def test_ridge_targets_fitted_together_equal_each_fitted_alone(add5):
    """fit_probes fits all its ridge targets from one factorisation per problem: the scores,
    intervals, controls and MAE equal those of each target probed on its own (and the seed's
    draws stay in job order)."""
    prompts = generate(TaskSpec(operation="add", digits=5, format="fixed", n=300, seed=2))
    common = dict(kind="ridge", positions=[5, 11, 16], n_boot=30, progress=False, seed=3)
    both = fit_probes(add5, prompts, ["operand_a", "operand_b"], **common)
    first = fit_probes(add5, prompts, ["operand_a"], **common)
    assert float(both.values.sel(target="operand_a").max()) > 0.5  # a real fit
    for name in ("score", "ci_low", "ci_high", "control", "mae"):
        together = both.values if name == "score" else both.extras[name]
        alone = first.values if name == "score" else first.extras[name]
        np.testing.assert_allclose(together.sel(target="operand_a").values, alone.sel(target="operand_a").values,
                                   rtol=0, atol=1e-9, err_msg=name)
