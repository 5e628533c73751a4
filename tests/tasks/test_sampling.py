"""Carry-balanced sampling gives long cascades their share; uniform sampling does not."""

from __future__ import annotations

from collections import Counter

import pytest

from arithinterp.errors import TaskError
from arithinterp.tasks import COMPLEXITY_CLASSES, TaskSpec, generate


def shares(values) -> dict:
    counts = Counter(values)
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())}


def test_balanced_classes_on_five_digit_addition():
    ps = generate(TaskSpec(digits=5, sampling="balance_classes", n=1200, seed=3))
    got = shares(ps.frame["complexity"])
    assert set(got) == set(COMPLEXITY_CLASSES)
    for cls in COMPLEXITY_CLASSES:
        assert got[cls] == pytest.approx(1 / 6, abs=0.02), got
    # the constructed operands are ordinary 5-digit numbers whose sums are right
    f = ps.frame
    assert f.operand_a.between(10_000, 99_999).all() and f.operand_b.between(10_000, 99_999).all()
    assert (f.answer == f.operand_a + f.operand_b).all()
    # and not all alike: every class shows many distinct problems
    for cls in COMPLEXITY_CLASSES:
        assert f[f.complexity == cls].prompt.nunique() > 150


def test_uniform_sampling_rarely_cascades():
    uniform = shares(generate(TaskSpec(digits=5, n=3000, seed=3)).frame["complexity"])
    long_uniform = sum(uniform.get(c, 0) for c in ("S3", "S4", "S5"))
    balanced = shares(
        generate(TaskSpec(digits=5, sampling="balance_classes", n=600)).frame["complexity"]
    )
    long_balanced = sum(balanced[c] for c in ("S3", "S4", "S5"))
    assert long_uniform < 0.03
    assert long_balanced > 0.45


def test_classes_a_width_cannot_hold_are_skipped():
    got = shares(generate(TaskSpec(digits=3, sampling="balance_classes", n=400)).frame.complexity)
    assert set(got) == {"S0", "S1", "S2", "S3"}
    assert all(v == pytest.approx(0.25, abs=0.01) for v in got.values())


def test_balanced_classes_with_a_width_range():
    ps = generate(TaskSpec(digits=(1, 4), sampling="balance_classes", n=500))
    got = shares(ps.frame.complexity)
    assert set(got) == {"S0", "S1", "S2", "S3", "S4"}
    assert all(v == pytest.approx(0.2, abs=0.01) for v in got.values())
    widths = {len(str(x)) for x in ps.frame.operand_a}
    assert widths == {1, 2, 3, 4}


@pytest.mark.parametrize("digits", [3, 5, (2, 4)])
def test_balanced_carries(digits):
    spec = TaskSpec(digits=digits, sampling="balance_carries", n=600)
    ps = generate(spec)
    got = shares(ps.frame["n_carries"])
    top = spec.digit_range[1]
    assert set(got) == set(range(top + 1))
    for share in got.values():
        assert share == pytest.approx(1 / (top + 1), abs=0.01)


def test_balanced_sampling_is_seeded():
    spec = TaskSpec(digits=4, sampling="balance_classes", n=100, seed=11)
    assert generate(spec).hash == generate(spec).hash
    assert generate(spec).hash != generate(TaskSpec(**{**spec.model_dump(), "seed": 12})).hash


def test_width_range_samples_widths_uniformly():
    ps = generate(TaskSpec(digits=(1, 4), n=2000))
    widths = shares(len(str(x)) for x in ps.frame.operand_a)
    assert all(v == pytest.approx(0.25, abs=0.04) for v in widths.values())


def test_subtraction_without_negatives():
    ps = generate(TaskSpec(operation="sub", digits=(1, 3), allow_negative=False, n=300))
    assert (ps.frame.answer >= 0).all()
    assert not ps.frame.negative.any()


@pytest.mark.parametrize(("digits", "allow_negative", "classes"), [
    (5, True, ("B0", "B1", "B2", "B3", "B4")),  # B_k needs k + 1 columns: nothing leaves the top one
    (5, False, ("B0", "B1", "B2", "B3", "B4")),
    (3, True, ("B0", "B1", "B2")),
    ((2, 6), False, ("B0", "B1", "B2", "B3", "B4", "B5")),
])
def test_balanced_borrow_classes_on_subtraction(digits, allow_negative, classes):
    from arithinterp.zoo.data import borrow_class  # an independent count of the cascade

    spec = TaskSpec(operation="sub", digits=digits, allow_negative=allow_negative, sampling="balance_classes",
                    n=600, seed=5)
    f = generate(spec).frame
    got = shares(f.complexity)
    assert tuple(got) == classes
    assert all(v == pytest.approx(1 / len(classes), abs=0.01) for v in got.values())
    a, b = f.operand_a.to_numpy(), f.operand_b.to_numpy()
    width = spec.digit_range[1]
    assert [f"B{k}" for k in borrow_class(a, b, width)] == list(f.complexity)
    assert (f.answer == a - b).all()
    lo, hi = spec.digit_range
    for x in (a, b):  # ordinary operands of the spec's widths
        assert all(lo <= len(str(v)) <= hi for v in x)
    negative = (a < b).mean()
    assert negative == (pytest.approx(0.5, abs=0.06) if allow_negative else 0.0)
    for cls in classes:  # not all alike
        assert f[f.complexity == cls].prompt.nunique() >= 0.95 * len(f) / len(classes)


def test_uniform_subtraction_rarely_cascades_and_carry_balancing_is_addition_only():
    uniform = shares(generate(TaskSpec(operation="sub", digits=5, n=3000, seed=3)).frame.complexity)
    assert sum(uniform.get(c, 0) for c in ("B3", "B4")) < 0.03
    with pytest.raises(TaskError, match="balance_carries.*'add' only"):
        TaskSpec(operation="sub", digits=5, sampling="balance_carries")
    with pytest.raises(TaskError, match="'add' and 'sub' only"):
        TaskSpec(operation="mul", digits=2, sampling="balance_classes")
