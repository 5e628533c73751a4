"""Candidate operand pairs with a given answer (Stolfo et al.'s type-2 counterfactuals).

Each function proposes candidate ``(a', b')`` arrays for one problem, built by
inverting the operation rather than by guessing: ``b' = answer - a'`` for
addition, divisors of the product for multiplication, and so on. The caller
filters the candidates (domain, validity, answer, not the clean pair) and
picks one at random.
"""

from __future__ import annotations

from functools import cache

import numpy as np

#: Intervals up to this size are enumerated outright when random proposals fail.
ENUMERATE_LIMIT = 1 << 21


def _draw(rng: np.random.Generator, lo: int, hi: int, m: int, exhaustive: bool) -> np.ndarray:
    if exhaustive:
        return np.arange(lo, hi + 1, dtype=np.int64)
    return rng.integers(lo, hi, size=m, endpoint=True, dtype=np.int64)


def _uniform_between(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """One uniform integer in ``lo..hi`` per entry (``lo`` where the interval is empty)."""
    return rng.integers(lo, np.maximum(lo, hi), endpoint=True, dtype=np.int64)


def propose(
    operation: str,
    rng: np.random.Generator,
    a: int,
    b: int,
    answer: int,
    ia: tuple[int, int],
    ib: tuple[int, int],
    *,
    p: int,
    m: int = 64,
    exhaustive: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ``(a', b')`` with ``a' in ia``, mostly ``b' in ib``, and ``a' op b' == answer``.

    ``exhaustive`` enumerates the free operand's whole interval instead of
    drawing ``m`` random values; the caller only asks for it on small ones.
    """
    (alo, ahi), (blo, bhi) = ia, ib
    if operation in ("add", "sub", "modadd"):
        ca = _draw(rng, alo, ahi, m, exhaustive)
        if operation == "add":
            cb = answer - ca
        elif operation == "sub":
            cb = ca - answer
        else:
            cb = (answer - ca) % p
            cb = cb + np.maximum(0, -(-(blo - cb) // p)) * p  # lift into b's interval
        return ca, cb
    if operation == "floordiv":
        ca = _draw(rng, alo, ahi, m, exhaustive)
        # a' // b' == q  <=>  a' // (q + 1) < b' <= a' // q
        lo = np.maximum(ca // (answer + 1) + 1, blo)
        hi = np.minimum(ca // answer, bhi) if answer > 0 else np.full_like(ca, bhi)
        return ca, _uniform_between(rng, lo, hi)
    if operation == "mod":
        cb = _draw(rng, max(blo, answer + 1), bhi, m, exhaustive) if max(blo, answer + 1) <= bhi \
            else np.zeros(0, dtype=np.int64)
        # a' = r + k b' inside a's interval, k >= 0
        kmin = np.maximum(0, -(-(alo - answer) // np.maximum(cb, 1)))
        kmax = (ahi - answer) // np.maximum(cb, 1)
        k = _uniform_between(rng, kmin, kmax)
        return answer + k * cb, cb
    if operation == "mul":
        return _mul_candidates(rng, a, b, answer, ia, ib, m)
    raise ValueError(f"unknown operation {operation!r}")


def _mul_candidates(rng, a, b, answer, ia, ib, m):
    (alo, ahi), (blo, bhi) = ia, ib
    if answer == 0:
        if blo == 0:
            ca = rng.integers(alo, ahi, size=m, endpoint=True, dtype=np.int64)
            return ca, np.zeros_like(ca)
        if alo == 0:
            cb = rng.integers(blo, bhi, size=m, endpoint=True, dtype=np.int64)
            return np.zeros_like(cb), cb
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ca = divisors_of_product(a, b)
    return ca, answer // ca


def _factorize(n: int, factors: dict[int, int]) -> None:
    """Add the prime factorisation of ``1 <= n < 2**32`` to ``factors``."""
    small = _primes_up_to(1 << 16)  # covers sqrt(n) for every n < 2**32
    rest = n
    for pr in small[(rest % small) == 0]:
        pr = int(pr)
        while rest % pr == 0:
            factors[pr] = factors.get(pr, 0) + 1
            rest //= pr
    if rest > 1:
        factors[rest] = factors.get(rest, 0) + 1


def divisors_of_product(a: int, b: int) -> np.ndarray:
    """All positive divisors of ``a * b`` for positive ``a, b < 2**32`` (sorted)."""
    factors: dict[int, int] = {}
    _factorize(a, factors)
    _factorize(b, factors)
    divs = np.array([1], dtype=np.int64)
    for pr, e in factors.items():
        powers = np.array([pr**k for k in range(e + 1)], dtype=np.int64)
        divs = (divs[:, None] * powers[None, :]).ravel()
    return np.sort(divs)


@cache
def _primes_up_to(limit: int) -> np.ndarray:
    sieve = np.ones(limit + 1, dtype=bool)
    sieve[:2] = False
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = False
    return np.flatnonzero(sieve).astype(np.int64)
