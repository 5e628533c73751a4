"""Vectorised data for the zoo tasks: token-id sequences, splits and carry classes.

Every generator returns token ids directly (numpy ``int64``), in the ids of
:mod:`arithinterp.zoo.tokenizers`, so training never round-trips through
strings. A sequence is the prompt followed by the answer; a model reads
``seq[:, :-1]`` and the logits at ``answer_positions`` predict the answer.

Carry classes follow Quirke & Barez: S0 no carry; S1 carries, none into a
sum-9 column; S2 a carry into one sum-9 column; S3/S4/S5 a carry cascading
through 2 / 3 / >=4 consecutive sum-9 columns. They are computed here from
the integers (``carry into column i`` is ``a mod 10^i + b mod 10^i >= 10^i``),
independently of :mod:`arithinterp.tasks`, so the two can check each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arithinterp.zoo.tokenizers import DIGIT_VOCAB

__all__ = [
    "CLASS_NAMES",
    "TaskFormat",
    "carry_into",
    "cascade_operands",
    "complexity_class",
    "digits",
    "sample_addition_operands",
    "sample_uniform_operands",
    "split_pairs",
]

CLASS_NAMES: tuple[str, ...] = ("S0", "S1", "S2", "S3", "S4", "S5")

_D = {tok: i for i, tok in enumerate(DIGIT_VOCAB)}
DIGIT_PLUS, DIGIT_STAR, DIGIT_EQ = _D["+"], _D["*"], _D["="]


def digits(x: np.ndarray, width: int, *, lsd_first: bool = False) -> np.ndarray:
    """Decimal digits of non-negative integers, shape ``(N, width)``, zero-padded."""
    x = np.asarray(x, dtype=np.int64)
    powers = 10 ** np.arange(width, dtype=np.int64)  # LSD first
    out = (x[:, None] // powers[None, :]) % 10
    return out if lsd_first else out[:, ::-1]


@dataclass(frozen=True)
class TaskFormat:
    """Token layout of one task: how operands become full id sequences."""

    kind: str
    prompt_len: int
    answer_len: int
    n_digits: int | None = None
    n_numbers: int | None = None  # number-level vocabularies: numbers 0..n_numbers-1
    p: int | None = None

    @classmethod
    def from_task(cls, task) -> TaskFormat:
        """Build from a :class:`arithinterp.zoo.recipe.TaskSpec`."""
        if task.kind == "add":
            n = task.n_digits
            return cls("add", 2 * n + 2, n + 1, n_digits=n)
        if task.kind == "mul":
            n = task.n_digits
            return cls("mul", 2 * n + 2, 2 * n, n_digits=n)
        if task.kind == "modadd":
            return cls("modadd", 3, 1, n_numbers=task.p, p=task.p)
        if task.kind == "add_tok":
            return cls("add_tok", 4, 1, n_numbers=2 * task.max_operand - 1)
        raise ValueError(f"unknown task kind {task.kind!r}")

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.answer_len

    @property
    def answer_positions(self) -> slice:
        """Positions of ``seq[:, :-1]`` whose logits predict the answer tokens."""
        return slice(self.prompt_len - 1, self.seq_len - 1)

    def answer_value(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if self.kind in ("add", "add_tok"):
            return a + b
        if self.kind == "mul":
            return a * b
        return (a + b) % self.p

    def answer_ids(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Answer token ids, shape ``(N, answer_len)``."""
        c = self.answer_value(a, b)
        if self.kind == "add":
            return digits(c, self.answer_len)  # MSD first
        if self.kind == "mul":
            return digits(c, self.answer_len, lsd_first=True)
        return c[:, None]

    def prompt_ids(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Prompt token ids, shape ``(N, prompt_len)``."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        n = len(a)
        if self.kind in ("add", "mul"):
            op = DIGIT_PLUS if self.kind == "add" else DIGIT_STAR
            col = np.full((n, 1), op, np.int64)
            eq = np.full((n, 1), DIGIT_EQ, np.int64)
            w = self.n_digits
            return np.concatenate([digits(a, w), col, digits(b, w), eq], axis=1)
        eq_id = self.n_numbers  # "=" directly follows the numbers
        eq = np.full((n, 1), eq_id, np.int64)
        if self.kind == "modadd":
            return np.concatenate([a[:, None], b[:, None], eq], axis=1)
        plus = np.full((n, 1), eq_id + 1, np.int64)
        return np.concatenate([a[:, None], plus, b[:, None], eq], axis=1)

    def sequences(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Prompt + answer ids, shape ``(N, seq_len)``."""
        return np.concatenate([self.prompt_ids(a, b), self.answer_ids(a, b)], axis=1)

    def prompt_text(self, a: int, b: int) -> str:
        """The prompt as a string, e.g. ``"00012+34567="`` or ``"5 7 ="``."""
        if self.kind in ("add", "mul"):
            op = "+" if self.kind == "add" else "*"
            w = self.n_digits
            return f"{a:0{w}d}{op}{b:0{w}d}="
        if self.kind == "modadd":
            return f"{a} {b} ="
        return f"{a}+{b}="

    def answer_text(self, a: int, b: int) -> str:
        ids = self.answer_ids(np.array([a]), np.array([b]))[0]
        if self.kind in ("add", "mul"):
            return "".join(str(int(d)) for d in ids)
        return str(int(ids[0]))


def sample_uniform_operands(
    rng: np.random.Generator, n: int, n_digits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Operands uniform on ``[0, 10^n_digits)``."""
    hi = 10**n_digits
    return rng.integers(0, hi, n, dtype=np.int64), rng.integers(0, hi, n, dtype=np.int64)


def sample_addition_operands(
    rng: np.random.Generator,
    n: int,
    n_digits: int,
    *,
    enrich_pair_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform operands; each digit pair is then forced to sum to 9 with the given
    probability (Quirke-style enrichment, which makes long carry cascades common)."""
    da = rng.integers(0, 10, (n, n_digits), dtype=np.int64)  # LSD first
    db = rng.integers(0, 10, (n, n_digits), dtype=np.int64)
    if enrich_pair_fraction > 0:
        force = rng.random((n, n_digits)) < enrich_pair_fraction
        db = np.where(force, 9 - da, db)
    powers = 10 ** np.arange(n_digits, dtype=np.int64)
    return da @ powers, db @ powers


def carry_into(a: np.ndarray, b: np.ndarray, n_digits: int) -> np.ndarray:
    """Whether a carry enters column i (LSD first), shape ``(N, n_digits)``; column 0 never."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    powers = 10 ** np.arange(n_digits, dtype=np.int64)
    return (a[:, None] % powers + b[:, None] % powers) >= powers


def complexity_class(a: np.ndarray, b: np.ndarray, n_digits: int) -> np.ndarray:
    """Quirke complexity class 0..5 (S0..S5) of each addition, shape ``(N,)``."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    carry = carry_into(a, b, n_digits)
    col_sum = digits(a, n_digits, lsd_first=True) + digits(b, n_digits, lsd_first=True)
    any_carry = carry.any(axis=1) | (col_sum[:, -1] >= 10)
    fed_nine = carry & (col_sum == 9)
    # longest run of consecutive sum-9 columns that receive a carry
    run = np.zeros(len(a), np.int64)
    longest = np.zeros(len(a), np.int64)
    for i in range(n_digits):
        run = np.where(fed_nine[:, i], run + 1, 0)
        longest = np.maximum(longest, run)
    cls = np.where(any_carry, 1 + np.minimum(longest, 4), 0)
    return cls


def cascade_operands(
    rng: np.random.Generator, n: int, n_digits: int, cls: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` additions of exactly complexity class ``cls`` (0..5).

    S2..S5 are constructed (a carry-generating column followed by ``cls-1``
    sum-9 columns, the rest random) and filtered by :func:`complexity_class`, so
    every class is represented even where it is rare under uniform sampling.
    """
    if not 0 <= cls <= 5:
        raise ValueError(f"class must be 0..5 (S0..S5), got {cls}")
    k = max(cls - 1, 0)  # number of sum-9 columns the carry runs through
    if cls >= 2 and k + 1 > n_digits:
        raise ValueError(f"S{cls} needs at least {k + 1} digits, have {n_digits}")
    out_a: list[np.ndarray] = []
    out_b: list[np.ndarray] = []
    have = 0
    while have < n:
        m = max(2 * (n - have), 64)
        da = rng.integers(0, 10, (m, n_digits), dtype=np.int64)
        db = rng.integers(0, 10, (m, n_digits), dtype=np.int64)
        if cls == 0:
            db = (rng.random((m, n_digits)) * (10 - da)).astype(np.int64)  # column sums <= 9
        elif cls >= 2:
            start = rng.integers(0, n_digits - k, m)  # the generating column
            rows = np.arange(m)
            gen_a = rng.integers(1, 10, m)
            gen_b = 10 - gen_a + (rng.random(m) * gen_a).astype(np.int64)  # sum in [10, 9+a]
            da[rows, start], db[rows, start] = gen_a, np.minimum(gen_b, 9)
            for j in range(1, k + 1):
                db[rows, start + j] = 9 - da[rows, start + j]
        powers = 10 ** np.arange(n_digits, dtype=np.int64)
        a, b = da @ powers, db @ powers
        keep = complexity_class(a, b, n_digits) == cls
        out_a.append(a[keep])
        out_b.append(b[keep])
        have += int(keep.sum())
    return np.concatenate(out_a)[:n], np.concatenate(out_b)[:n]


def split_pairs(n_values: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of all ``n_values**2`` pairs ``(a, b)`` into train and test.

    Returns ``(train, test)`` as ``(k, 2)`` arrays of operands. The split depends
    only on ``(n_values, train_fraction, seed)``.
    """
    a, b = np.divmod(np.arange(n_values * n_values, dtype=np.int64), n_values)
    order = np.random.default_rng(seed).permutation(len(a))
    n_train = int(train_fraction * len(a))  # floor, as Nanda et al. (3,830 of 12,769)
    pairs = np.stack([a, b], axis=1)[order]
    return pairs[:n_train], pairs[n_train:]
