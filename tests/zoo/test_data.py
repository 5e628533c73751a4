"""Carry classes against a literal column-by-column oracle; balanced cascades; splits."""

from __future__ import annotations

import numpy as np
import pytest

from arithinterp.zoo.data import (
    carry_into,
    cascade_operands,
    complexity_class,
    sample_addition_operands,
    split_pairs,
)


def literal_class(a: int, b: int, n: int) -> int:
    """Schoolbook addition, one column at a time (the oracle)."""
    carry, run, longest, any_carry = 0, 0, 0, False
    for i in range(n):
        s = (a // 10**i) % 10 + (b // 10**i) % 10
        run = run + 1 if (carry and s == 9) else 0
        longest = max(longest, run)
        carry = int(s + carry >= 10)
        any_carry = any_carry or bool(carry)
    return 0 if not any_carry else 1 + min(longest, 4)


def test_known_examples():
    a = np.array([12345, 15, 95, 1, 99999, 45, 1])
    b = np.array([11111, 5, 5, 99999, 1, 55, 99998])
    # 12345+11111: none; 15+5: carry into a 0+1 column; 95+5: carry into a sum-9 column;
    # 1+99999: cascade through 4 sum-9 columns; 45+55 carry into 4+5=9 -> S2; 1+99998 none
    assert complexity_class(a, b, 5).tolist() == [0, 1, 2, 5, 5, 2, 0]
    assert carry_into(np.array([95]), np.array([5]), 5).tolist() == [
        [False, True, True, False, False]
    ]


@pytest.mark.parametrize("enrich", [0.0, 0.4, 0.9])
def test_matches_literal_oracle(enrich):
    rng = np.random.default_rng(1)
    a, b = sample_addition_operands(rng, 3000, 5, enrich_pair_fraction=enrich)
    got = complexity_class(a, b, 5)
    assert got.tolist() == [literal_class(int(x), int(y), 5) for x, y in zip(a, b)]


def test_enrichment_makes_cascades_common():
    rng = np.random.default_rng(0)
    plain = complexity_class(*sample_addition_operands(rng, 50_000, 5), 5)
    rich = complexity_class(*sample_addition_operands(rng, 50_000, 5, enrich_pair_fraction=0.4), 5)
    assert (rich >= 3).mean() > 5 * (plain >= 3).mean()


@pytest.mark.parametrize("cls", range(6))
def test_cascades_are_exactly_their_class(cls):
    a, b = cascade_operands(np.random.default_rng(cls), 500, 5, cls)
    assert len(a) == 500
    assert (complexity_class(a, b, 5) == cls).all()
    assert ((a >= 0) & (a < 10**5) & (b >= 0) & (b < 10**5)).all()
    assert len(set(zip(a.tolist(), b.tolist()))) > 400  # varied, not one example repeated


def test_cascade_needs_enough_digits():
    with pytest.raises(ValueError, match="digits"):
        cascade_operands(np.random.default_rng(0), 5, 3, 5)


def test_split_is_seeded_disjoint_and_complete():
    train, test = split_pairs(113, 0.3, seed=0)
    assert len(train) == 3830 and len(train) + len(test) == 113 * 113
    both = {tuple(p) for p in train.tolist()} | {tuple(p) for p in test.tolist()}
    assert len(both) == 113 * 113
    again, _ = split_pairs(113, 0.3, seed=0)
    assert (again == train).all()
    other, _ = split_pairs(113, 0.3, seed=1)
    assert not (other == train).all()
