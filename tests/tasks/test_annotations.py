"""Every ground-truth column against arithmetic written independently here.

The references below work on decimal strings and Python big integers and
never call the package's helpers, so a shared mistake cannot hide.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arithinterp.tasks import PromptSet, TaskSpec

WIDTHS = st.integers(min_value=1, max_value=8)


def operands(nonzero_b: bool = False):
    """(w, a, b): either both operands of exactly w digits, or any widths up to w."""

    def of_width(w: int):
        lo = 0 if w == 1 else 10 ** (w - 1)
        hi = 10**w - 1
        blo = 1 if nonzero_b else 0
        exact = st.tuples(st.just(w), st.integers(lo, hi), st.integers(max(lo, blo), hi))
        mixed = st.tuples(st.just(-w), st.integers(0, hi), st.integers(blo, hi))
        return exact | mixed

    return WIDTHS.flatmap(of_width)


def row_of(operation: str, w: int, a: int, b: int, **extra) -> dict:
    """A one-prompt frame row; ``w < 0`` means a width range 1..|w|."""
    digits = w if w > 0 else (1, -w)
    ps = PromptSet.from_operands(TaskSpec(operation=operation, digits=digits, **extra), [a], [b])
    return ps.frame.iloc[0].to_dict()


def lsd(x: int, width: int) -> list[int]:
    """Digits of |x| as a list, units first, padded with zeros to ``width``."""
    return [int(ch) for ch in str(abs(x)).zfill(width)[::-1]]


def check_common(row: dict, w: int, a: int, b: int, answer: int) -> None:
    assert row["answer"] == answer
    for name, value in (("a", a), ("b", b)):
        assert [row[f"{name}_digit_{i}"] for i in range(w)] == lsd(value, w)
    n_ans = len([k for k in row if k.startswith("answer_digit_")])
    digits = [row[f"answer_digit_{i}"] for i in range(n_ans)]
    assert int("".join(str(d) for d in reversed(digits))) == abs(answer)
    assert row["n_answer_digits"] == len(str(abs(answer)))


def reference_complexity(a: int, b: int, w: int) -> str:
    """Quirke's class from the tri-case string: the longest '9'-run right after a carry maker."""
    da, db = lsd(a, w), lsd(b, w)
    tri = "".join("C" if x + y >= 10 else "9" if x + y == 9 else "." for x, y in zip(da, db))
    if "C" not in tri:
        return "S0"
    longest = max((len(m) - 1 for m in re.findall(r"C9*", tri)), default=0)
    return f"S{1 + min(longest, 4)}"


@settings(max_examples=120, deadline=None)
@given(operands())
def test_addition_annotations(case):
    w, a, b = case
    row = row_of("add", w, a, b)
    w = abs(w)
    check_common(row, w, a, b, a + b)
    da, db = lsd(a, w), lsd(b, w)
    carry, rebuilt, n_carries = 0, 0, 0
    for i in range(w):
        assert row[f"carry_in_{i}"] == carry
        s = da[i] + db[i]
        assert row[f"SA_{i}"] == s % 10
        assert row[f"SC_{i}"] == (s > 9)
        assert row[f"SS_{i}"] == (s == 9)
        assert row[f"ST_{i}"] == (0 if s < 9 else 1 if s == 9 else 2)
        rebuilt += ((s + carry) % 10) * 10**i
        carry = (s + carry) // 10
        n_carries += carry
    assert row[f"carry_in_{w}"] == carry
    assert rebuilt + carry * 10**w == a + b  # the carries reproduce the sum column by column
    assert row["n_carries"] == n_carries
    assert row["complexity"] == reference_complexity(a, b, w)


@settings(max_examples=120, deadline=None)
@given(operands())
def test_subtraction_borrows(case):
    w, a, b = case
    row = row_of("sub", w, a, b)
    w = abs(w)
    check_common(row, w, a, b, a - b)
    assert row["negative"] == (a < b)
    top, bottom = lsd(max(a, b), w), lsd(min(a, b), w)
    borrow_in, value = 0, 0
    for i in range(w):
        borrow = row[f"borrow_{i}"]
        digit = top[i] - bottom[i] - borrow_in + 10 * borrow
        assert 0 <= digit <= 9
        assert digit == row[f"answer_digit_{i}"] if i < len(str(abs(a - b))) else digit == 0
        value += digit * 10**i
        borrow_in = borrow
    assert borrow_in == 0  # nothing borrowed past the top column
    assert value == abs(a - b)
    assert row["n_borrows"] == sum(row[f"borrow_{i}"] for i in range(w))
    # a - b column by column in prompt order, borrowing past the top column when a < b
    rest, borrow_in, rebuilt = a - b, 0, 0
    for i in range(w):
        borrow = row[f"ab_borrow_{i}"]
        digit = lsd(a, w)[i] - lsd(b, w)[i] - borrow_in + 10 * borrow
        assert 0 <= digit <= 9
        rebuilt += digit * 10**i
        borrow_in = borrow
    assert borrow_in == (a < b)
    assert rebuilt - borrow_in * 10**w == rest  # the ten's complement of a negative difference
    da, db = lsd(a, w), lsd(b, w)
    for i in range(w):  # Quirke, Neo & Barez's sub-tasks, in prompt order
        assert row[f"MD_{i}"] == (da[i] - db[i] + 10) % 10
        assert row[f"MB_{i}"] == (da[i] < db[i])
        assert row[f"MZ_{i}"] == (da[i] == db[i])
        assert row[f"GT_{i}"] == (da[i] > db[i])
        assert row[f"MT_{i}"] == {1: 0, 0: 1, -1: 2}[(da[i] > db[i]) - (da[i] < db[i])]
    assert row["complexity"] == reference_borrow_class(a, b, w)


def reference_borrow_class(a: int, b: int, w: int) -> str:
    """The borrow-cascade class from a column string of max - min: 'B' a column that borrows
    (with its incoming borrow), 'z' a zero-difference column, '.' any other; the longest run
    of 'z' columns directly above a borrowing column (each borrows on: 0 - 0 - 1 < 0)."""
    top, bottom = lsd(max(a, b), w), lsd(min(a, b), w)
    cols, borrow = [], 0
    for x, y in zip(top, bottom):
        fed_zero = borrow and x == y
        borrow = int(x - y - borrow < 0)
        cols.append("z" if fed_zero else "B" if borrow else ".")
    text = "".join(cols)
    if "B" not in text and "z" not in text:
        return "B0"
    longest = max((len(m) - 1 for m in re.findall(r"Bz*", text)), default=0)
    return f"B{1 + min(longest, 4)}"


@pytest.mark.parametrize(("a", "b", "cls"), [
    (54321, 12345, "B2"), (100, 1, "B2"), (10000, 1, "B4"), (23, 45, "B0"), (5, 5, "B0"),
    (1000, 999, "B1"), (1000000, 1, "B5"), (45, 23, "B0"), (12, 21, "B1"),
])
def test_borrow_classes_by_hand(a, b, cls):
    w = len(str(max(a, b)))
    assert row_of("sub", -w, a, b)["complexity"] == cls


def test_borrow_classes_match_the_zoo():
    from arithinterp.zoo.data import borrow_class

    rng = np.random.default_rng(0)
    a = rng.integers(10**4, 10**5, 4000)
    near = a + rng.integers(-30, 30, 4000)  # near-equal operands: zero-difference columns
    b = np.clip(np.where(rng.random(4000) < 0.5, near, rng.integers(10**4, 10**5, 4000)), 10**4, 10**5 - 1)
    ps = PromptSet.from_operands(TaskSpec(operation="sub", digits=5, format="fixed"), a, b)
    zoo = ["B0", "B1", "B2", "B3", "B4", "B5"]
    assert ps.frame["complexity"].tolist() == [zoo[k] for k in borrow_class(a, b, 5)]
    assert set(ps.frame["complexity"]) >= {"B0", "B1", "B2", "B3"}


@settings(max_examples=100, deadline=None)
@given(operands())
def test_multiplication_running_sums(case):
    w, a, b = case
    row = row_of("mul", w, a, b)
    w = abs(w)
    check_common(row, w, a, b, a * b)
    da, db = lsd(a, w), lsd(b, w)
    for i in range(w):
        for j in range(w):
            assert row[f"pp_{i}_{j}"] == da[i] * db[j]
    n_ans = len([k for k in row if k.startswith("c_hat_")])
    assert n_ans == len(str((10**w - 1) ** 2))
    prev, rebuilt = 0, 0
    for k in range(n_ans):
        col = sum(da[i] * db[k - i] for i in range(w) if 0 <= k - i < w)
        assert row[f"s_{k}"] == col
        c_hat = col + prev // 10
        assert row[f"c_hat_{k}"] == c_hat
        assert c_hat % 10 == row[f"answer_digit_{k}"]
        rebuilt += (c_hat % 10) * 10**k
        prev = c_hat
    assert prev < 10  # the last running sum leaves no carry
    assert rebuilt == a * b


@settings(max_examples=60, deadline=None)
@given(operands(nonzero_b=True), st.sampled_from(["floordiv", "mod"]))
def test_division_and_modulo(case, operation):
    w, a, b = case
    row = row_of(operation, w, a, b)
    w = abs(w)
    q, r = divmod(a, b)
    check_common(row, w, a, b, q if operation == "floordiv" else r)
    assert row["quotient"] * b + row["remainder"] == a
    assert 0 <= row["remainder"] < b


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 500).flatmap(lambda p: st.tuples(st.just(p), st.integers(0, p - 1),
                                                        st.integers(0, p - 1))))
def test_modular_addition(case):
    p, a, b = case
    ps = PromptSet.from_operands(TaskSpec(operation="modadd", format="modular", p=p), [a], [b])
    row = ps.frame.iloc[0]
    assert row["answer"] == (a + b) % p and row["raw_sum"] == a + b
    assert ps.prompts[0] == f"{a} {b} =" and ps.answers[0] == str((a + b) % p)


@pytest.mark.parametrize(
    ("a", "b", "cls"),
    [
        (12345, 11111, "S0"),  # no carry
        (19999, 10000, "S0"),  # sum-9 columns but nothing carries into them
        (15, 15, "S1"),  # a carry into a column summing to 2
        (195, 105, "S2"),  # units carry into one sum-9 column
        (1995, 1005, "S3"),
        (19995, 10005, "S4"),
        (99995, 5, "S5"),
        (59995, 40005, "S5"),
        (45, 55, "S2"),
    ],
)
def test_complexity_examples(a, b, cls):
    w = max(len(str(a)), len(str(b)))
    spec = TaskSpec(digits=(1, w))
    assert PromptSet.from_operands(spec, [a], [b]).frame["complexity"][0] == cls
