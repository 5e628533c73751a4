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

Borrow classes are the subtraction analogue, on ``|a - b| = max - min``: a
borrow passes through a column whose digit difference is 0 exactly as a carry
passes through a sum-9 column. B0 no borrow; B1 borrows, none into a
zero-difference column; B2 a borrow into one; B3/B4/B5 a borrow cascading
through 2 / 3 / >=4 consecutive zero-difference columns.

Multi-operator tasks (``addsub``, ``ops_tok``) carry a third operand array,
``op``: the index of the operator in :attr:`TaskFormat.ops`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arithinterp.zoo.tokenizers import DIGIT_VOCAB

__all__ = [
    "BORROW_CLASS_NAMES",
    "CLASS_NAMES",
    "OPS_TOK_OPERATORS",
    "TaskFormat",
    "borrow_cascade_operands",
    "borrow_class",
    "borrow_into",
    "carry_into",
    "cascade_operands",
    "complexity_class",
    "digits",
    "ops_tok_pairs",
    "running_sums",
    "sample_subtraction_operands",
    "sample_addition_operands",
    "sample_uniform_operands",
    "split_pairs",
]

CLASS_NAMES: tuple[str, ...] = ("S0", "S1", "S2", "S3", "S4", "S5")
BORROW_CLASS_NAMES: tuple[str, ...] = ("B0", "B1", "B2", "B3", "B4", "B5")

_D = {tok: i for i, tok in enumerate(DIGIT_VOCAB)}
DIGIT_PLUS, DIGIT_MINUS, DIGIT_STAR, DIGIT_EQ = _D["+"], _D["-"], _D["*"], _D["="]

#: Operators of ``ops_tok`` in index order, as the arithinterp.tasks operation names.
OPS_TOK_OPERATORS: tuple[str, ...] = ("add", "sub", "mul", "floordiv")
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "floordiv": "/"}


def digits(x: np.ndarray, width: int, *, lsd_first: bool = False) -> np.ndarray:
    """Decimal digits of non-negative integers, shape ``(N, width)``, zero-padded."""
    x = np.asarray(x, dtype=np.int64)
    powers = 10 ** np.arange(width, dtype=np.int64)  # LSD first
    out = (x[:, None] // powers[None, :]) % 10
    return out if lsd_first else out[:, ::-1]


@dataclass(frozen=True)
class TaskFormat:
    """Token layout of one task: how operands become full id sequences.

    ``ops`` names the operators of a multi-operator task (``addsub``,
    ``ops_tok``); their problems carry ``op``, an index into it. ``msd_first``
    is the answer order of the digit tasks (``mul`` may be either).
    """

    kind: str
    prompt_len: int
    answer_len: int
    n_digits: int | None = None
    n_numbers: int | None = None  # number-level vocabularies: numbers 0..n_numbers-1
    p: int | None = None
    msd_first: bool = True
    ops: tuple[str, ...] = ()
    max_operand: int | None = None

    @classmethod
    def from_task(cls, task) -> TaskFormat:
        """Build from a :class:`arithinterp.zoo.recipe.TaskSpec`."""
        n = task.n_digits
        if task.kind == "add":
            return cls("add", 2 * n + 2, n + 1, n_digits=n, ops=("add",))
        if task.kind == "sub":  # sign, then n digits
            return cls("sub", 2 * n + 2, n + 1, n_digits=n, ops=("sub",))
        if task.kind == "addsub":  # n + 1 answer tokens either way: a carry digit or a sign
            return cls("addsub", 2 * n + 2, n + 1, n_digits=n, ops=("add", "sub"))
        if task.kind == "mul":
            msd = getattr(task, "answer_order", None) == "msd"
            return cls("mul", 2 * n + 2, 2 * n, n_digits=n, msd_first=msd, ops=("mul",))
        if task.kind == "modadd":
            return cls("modadd", 3, 1, n_numbers=task.p, p=task.p)
        if task.kind == "add_tok":
            return cls("add_tok", 4, 1, n_numbers=2 * task.max_operand - 1)
        if task.kind == "ops_tok":
            return cls(
                "ops_tok", 4, 1, n_numbers=task.max_result + 1, ops=OPS_TOK_OPERATORS,
                max_operand=task.max_operand,
            )
        raise ValueError(f"unknown task kind {task.kind!r}")

    @property
    def digit_level(self) -> bool:
        return self.kind in ("add", "sub", "addsub", "mul")

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.answer_len

    @property
    def answer_positions(self) -> slice:
        """Positions of ``seq[:, :-1]`` whose logits predict the answer tokens."""
        return slice(self.prompt_len - 1, self.seq_len - 1)

    def _op(self, a: np.ndarray, op: np.ndarray | int | None) -> np.ndarray:
        if op is None:
            if len(self.ops) > 1:
                raise ValueError(f"task {self.kind!r} has operators {self.ops}; pass op")
            op = 0
        return np.broadcast_to(np.asarray(op, np.int64), np.shape(a))

    def answer_value(self, a: np.ndarray, b: np.ndarray, op=None) -> np.ndarray:
        """The integer answers (signed for subtraction)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if self.kind == "modadd":
            return (a + b) % self.p
        if self.kind == "add_tok":
            return a + b
        names = np.asarray(self.ops)[self._op(a, op)]
        safe_b = np.where(b == 0, 1, b)
        return np.select(
            [names == "add", names == "sub", names == "mul"],
            [a + b, a - b, a * b],
            default=a // safe_b,
        )

    def answer_ids(self, a: np.ndarray, b: np.ndarray, op=None) -> np.ndarray:
        """Answer token ids, shape ``(N, answer_len)``."""
        c = self.answer_value(a, b, op)
        if self.kind == "add":
            return digits(c, self.answer_len)  # MSD first
        if self.kind == "mul":
            return digits(c, self.answer_len, lsd_first=not self.msd_first)
        if self.kind in ("sub", "addsub"):
            n = self.n_digits
            sign = np.where(c < 0, DIGIT_MINUS, DIGIT_PLUS)[:, None]
            signed = np.concatenate([sign, digits(np.abs(c), n)], axis=1)
            if self.kind == "sub":
                return signed
            is_sub = self._op(a, op) == 1
            return np.where(is_sub[:, None], signed, digits(np.maximum(c, 0), n + 1))
        return c[:, None]

    def prompt_ids(self, a: np.ndarray, b: np.ndarray, op=None) -> np.ndarray:
        """Prompt token ids, shape ``(N, prompt_len)``."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        n = len(a)
        if self.digit_level:
            ids = {"add": DIGIT_PLUS, "sub": DIGIT_MINUS, "mul": DIGIT_STAR}
            op_ids = np.asarray([ids[o] for o in self.ops], np.int64)[self._op(a, op)]
            eq = np.full((n, 1), DIGIT_EQ, np.int64)
            w = self.n_digits
            return np.concatenate([digits(a, w), op_ids[:, None], digits(b, w), eq], axis=1)
        eq_id = self.n_numbers  # "=" directly follows the numbers, then + - * / %
        eq = np.full((n, 1), eq_id, np.int64)
        if self.kind == "modadd":
            return np.concatenate([a[:, None], b[:, None], eq], axis=1)
        if self.kind == "ops_tok":
            sym = np.asarray([eq_id + 1 + "+-*/".index(_SYMBOL[o]) for o in self.ops], np.int64)
            mid = sym[self._op(a, op)][:, None]
        else:
            mid = np.full((n, 1), eq_id + 1, np.int64)
        return np.concatenate([a[:, None], mid, b[:, None], eq], axis=1)

    def sequences(self, a: np.ndarray, b: np.ndarray, op=None) -> np.ndarray:
        """Prompt + answer ids, shape ``(N, seq_len)``."""
        return np.concatenate([self.prompt_ids(a, b, op), self.answer_ids(a, b, op)], axis=1)

    def prompt_text(self, a: int, b: int, op: int = 0) -> str:
        """The prompt as a string, e.g. ``"00012+34567="`` or ``"5 7 ="``."""
        if self.kind == "modadd":
            return f"{a} {b} ="
        sym = _SYMBOL[self.ops[op]] if self.ops else "+"
        if self.digit_level:
            w = self.n_digits
            return f"{a:0{w}d}{sym}{b:0{w}d}="
        return f"{a}{sym}{b}="

    def answer_text(self, a: int, b: int, op: int = 0) -> str:
        ids = self.answer_ids(np.array([a]), np.array([b]), None if len(self.ops) < 2 else op)[0]
        if self.digit_level:
            return "".join(DIGIT_VOCAB[int(d)] for d in ids)
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


def _longest_run(mask: np.ndarray) -> np.ndarray:
    """Per row, the longest run of consecutive true columns of ``mask [N, columns]``."""
    run = np.zeros(len(mask), np.int64)
    longest = np.zeros(len(mask), np.int64)
    for i in range(mask.shape[1]):
        run = np.where(mask[:, i], run + 1, 0)
        longest = np.maximum(longest, run)
    return longest


def complexity_class(a: np.ndarray, b: np.ndarray, n_digits: int) -> np.ndarray:
    """Quirke complexity class 0..5 (S0..S5) of each addition, shape ``(N,)``."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    carry = carry_into(a, b, n_digits)
    col_sum = digits(a, n_digits, lsd_first=True) + digits(b, n_digits, lsd_first=True)
    any_carry = carry.any(axis=1) | (col_sum[:, -1] >= 10)
    longest = _longest_run(carry & (col_sum == 9))  # sum-9 columns that receive a carry
    return np.where(any_carry, 1 + np.minimum(longest, 4), 0)


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


def sample_subtraction_operands(
    rng: np.random.Generator, n: int, n_digits: int, *, enrich_pair_fraction: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform operands; each digit of ``b`` is then set equal to ``a``'s with the given
    probability (zero-difference columns, through which borrows cascade, and near-equal
    operands, whose sign is the hardest to read)."""
    da = rng.integers(0, 10, (n, n_digits), dtype=np.int64)  # LSD first
    db = rng.integers(0, 10, (n, n_digits), dtype=np.int64)
    if enrich_pair_fraction > 0:
        db = np.where(rng.random((n, n_digits)) < enrich_pair_fraction, da, db)
    powers = 10 ** np.arange(n_digits, dtype=np.int64)
    return da @ powers, db @ powers


def borrow_into(a: np.ndarray, b: np.ndarray, n_digits: int) -> np.ndarray:
    """Whether a borrow enters column i (LSD first) of ``max(a, b) - min(a, b)``,
    shape ``(N, n_digits)``; column 0 never. Computed from the integers:
    ``max mod 10^i < min mod 10^i``."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    hi, lo = np.maximum(a, b), np.minimum(a, b)
    powers = 10 ** np.arange(n_digits, dtype=np.int64)
    return (hi[:, None] % powers) < (lo[:, None] % powers)


def borrow_class(a: np.ndarray, b: np.ndarray, n_digits: int) -> np.ndarray:
    """Borrow-cascade class 0..5 (B0..B5) of each subtraction, shape ``(N,)``."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    borrow = borrow_into(a, b, n_digits)
    hi = digits(np.maximum(a, b), n_digits, lsd_first=True)
    lo = digits(np.minimum(a, b), n_digits, lsd_first=True)
    longest = _longest_run(borrow & (hi == lo))  # zero-difference columns that receive a borrow
    return np.where(borrow.any(axis=1), 1 + np.minimum(longest, 4), 0)


def borrow_cascade_operands(
    rng: np.random.Generator, n: int, n_digits: int, cls: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` subtractions of exactly borrow class ``cls`` (0..5), half of them negative.

    Built digit by digit on (larger, smaller): B0 has every smaller digit <= the
    larger one; B2..B5 put a borrow-generating column under ``cls - 1``
    zero-difference columns. Every draw is filtered by :func:`borrow_class`.
    """
    if not 0 <= cls <= 5:
        raise ValueError(f"class must be 0..5 (B0..B5), got {cls}")
    k = max(cls - 1, 0)
    if cls >= 2 and k + 2 > n_digits:  # the generating column needs a column above the run
        raise ValueError(f"B{cls} needs at least {k + 2} digits, have {n_digits}")
    powers = 10 ** np.arange(n_digits, dtype=np.int64)
    out_a: list[np.ndarray] = []
    out_b: list[np.ndarray] = []
    have = 0
    while have < n:
        m = max(4 * (n - have), 64)
        dh = rng.integers(0, 10, (m, n_digits), dtype=np.int64)
        dl = rng.integers(0, 10, (m, n_digits), dtype=np.int64)
        if cls == 0:
            dl = (rng.random((m, n_digits)) * (dh + 1)).astype(np.int64)
        elif cls >= 2:
            start = rng.integers(0, n_digits - k - 1, m)
            rows = np.arange(m)
            dl[rows, start] = rng.integers(1, 10, m)
            dh[rows, start] = (rng.random(m) * dl[rows, start]).astype(np.int64)  # < dl
            for j in range(1, k + 1):
                dl[rows, start + j] = dh[rows, start + j]
        hi, lo = dh @ powers, dl @ powers
        keep = (hi >= lo) & (borrow_class(hi, lo, n_digits) == cls)
        hi, lo = hi[keep], lo[keep]
        swap = rng.random(len(hi)) < 0.5
        out_a.append(np.where(swap, lo, hi))
        out_b.append(np.where(swap, hi, lo))
        have += int(keep.sum())
    return np.concatenate(out_a)[:n], np.concatenate(out_b)[:n]


def running_sums(a: np.ndarray, b: np.ndarray, n_digits: int) -> np.ndarray:
    """Bai et al.'s running sums, shape ``(N, 2 n_digits)``, column k for answer digit k
    (LSD first): ``s_k = sum_{i+j=k} a_i b_j``, ``c^_k = s_k + floor(c^_{k-1} / 10)``;
    the answer digit is ``c^_k mod 10``."""
    da = digits(a, n_digits, lsd_first=True)
    db = digits(b, n_digits, lsd_first=True)
    width = 2 * n_digits
    s = np.zeros((len(da), width), np.int64)
    for i in range(n_digits):
        for j in range(n_digits):
            s[:, i + j] += da[:, i] * db[:, j]
    out = np.zeros_like(s)
    prev = np.zeros(len(da), np.int64)
    for k in range(width):
        out[:, k] = s[:, k] + prev // 10
        prev = out[:, k]
    return out


def ops_tok_pairs(max_operand: int, max_result: int) -> list[np.ndarray]:
    """Every problem of ``ops_tok`` per operator (in :data:`OPS_TOK_OPERATORS` order),
    each ``(k, 2)``: operands below ``max_operand``, a non-negative result of at most
    ``max_result`` (so it is one token), no division by 0."""
    a, b = np.divmod(np.arange(max_operand * max_operand, dtype=np.int64), max_operand)
    keep = {
        "add": a + b <= max_result,
        "sub": a >= b,
        "mul": a * b <= max_result,
        "floordiv": b > 0,
    }
    return [np.stack([a[keep[o]], b[keep[o]]], axis=1) for o in OPS_TOK_OPERATORS]
