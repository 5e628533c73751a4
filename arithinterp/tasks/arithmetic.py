"""Ground-truth arithmetic: answers and per-column annotations, vectorised over prompts.

Every column annotation is indexed from the least significant digit: column
``i`` is the ``10**i`` place (``i = 0`` is the units), whatever order the
prompt text writes the digits in. Digits beyond a number's length are 0.

Addition (Quirke & Barez's sub-tasks), for column ``i`` with digits ``a_i``, ``b_i``:

* ``SA_i = (a_i + b_i) mod 10`` (base add), ``SC_i = a_i + b_i >= 10`` (makes a carry),
  ``SS_i = a_i + b_i == 9`` (sum 9: passes an incoming carry on),
  ``ST_i`` = 0, 1, 2 for ``a_i + b_i`` < 9, == 9, >= 10 (tri-case).
* ``carry_in_i``: the carry actually propagated into column ``i`` by long
  addition (``carry_in_0 = 0``; ``carry_in_{w}`` is the carry out of the top
  operand column, i.e. the answer's extra leading digit).
* ``n_carries``: how many columns send a carry on (= sum of ``carry_in_i``).
* ``complexity``: ``S0`` when no column makes a carry (no ``SC``). Otherwise
  let ``L`` be the longest run of consecutive ``SS`` columns ``j+1 .. j+L``
  sitting directly above a carry-making column ``j`` (``SC_j``): exactly the
  sum-9 columns that receive a cascading carry. ``S1`` when ``L = 0``,
  ``S2`` when ``L = 1``, ``S3`` / ``S4`` for 2 / 3, ``S5`` for ``L >= 4``.
  A run of ``SS`` columns with no carry beneath it does not count.

Subtraction: long subtraction of the smaller operand from the larger,
``max(a, b) - min(a, b)``, so that the borrows produce the digits of
``|a - b|`` (the answer's digits; ``negative`` records the sign).
``borrow_i = 1`` when column ``i`` must borrow from column ``i + 1``, i.e.
``m_i - s_i - borrow_{i-1} < 0`` (``borrow_{-1} = 0``); so ``borrow_i`` is the
borrow *into* column ``i + 1``.

* ``ab_borrow_i``: the borrow out of column ``i`` of ``a - b`` done column by column in
  prompt order whatever the sign (ten's complement: ``(a mod 10**(i+1)) < (b mod 10**(i+1))``;
  out of the top column exactly when ``a < b``). It equals ``borrow_i`` when ``a >= b``; when
  ``a < b`` it is the borrow of ``a - b`` where ``borrow_i`` is that of ``b - a``, so, lower
  columns equal apart, the two are complements. (Not ``borrow_*``: reports probe those.)
* Quirke, Neo & Barez's subtraction sub-tasks, on the digits in prompt order
  (``a_i`` of the minuend, ``b_i`` of the subtrahend): ``MD_i = (a_i - b_i) mod 10``
  (base difference), ``MB_i = a_i < b_i`` (borrow one: the column makes a borrow),
  ``MZ_i = a_i == b_i`` (difference zero: passes an incoming borrow on),
  ``GT_i = a_i > b_i`` (greater than), and the tri-case ``MT_i`` = 0, 1, 2 for
  ``a_i`` >, ==, < ``b_i`` (0 absorbs a borrow, 1 passes it on, 2 makes one, as ``ST``).
  For a negative answer the model computes ``b - a``, where a column makes a borrow
  when ``GT_i``: these columns are the operand-order features, before the sign is known.
* ``complexity``: the borrow-cascade class of ``max - min``, the subtraction analogue
  of the ``S`` classes: ``B0`` no borrow; else ``B1`` + the longest run of consecutive
  zero-difference columns (``max_i == min_i``) that receive a borrow, capped at ``B5``.

Multiplication (Bai et al.'s running sums): ``pp_{i}_{j} = a_i * b_j``,
``s_k = sum_{i+j=k} a_i b_j``, ``c_hat_k = s_k + floor(c_hat_{k-1} / 10)``
with ``c_hat_{-1} = 0``; then ``c_hat_k mod 10`` is answer digit ``k``.

Division and modulo: ``quotient = a // b`` and ``remainder = a % b``.
"""

from __future__ import annotations

import numpy as np

COMPLEXITY_CLASSES: tuple[str, ...] = ("S0", "S1", "S2", "S3", "S4", "S5")
BORROW_CLASSES: tuple[str, ...] = ("B0", "B1", "B2", "B3", "B4", "B5")


def compute_answers(operation: str, a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """The integer answer of each ``a <op> b`` (the divisor must be nonzero)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if operation == "add":
        return a + b
    if operation == "sub":
        return a - b
    if operation == "mul":
        return a * b
    if operation in ("floordiv", "mod"):
        safe = np.where(b == 0, 1, b)
        return a // safe if operation == "floordiv" else a % safe
    if operation == "modadd":
        return (a + b) % p
    raise ValueError(f"unknown operation {operation!r}")


def digits_lsd(values: np.ndarray, width: int) -> np.ndarray:
    """``[n, width]`` digits of ``|values|``, column ``i`` holding the ``10**i`` place."""
    v = np.abs(np.asarray(values, dtype=np.int64))
    powers = 10 ** np.arange(width, dtype=np.int64)
    return (v[:, None] // powers[None, :]) % 10


def addition_columns(da: np.ndarray, db: np.ndarray) -> dict[str, np.ndarray]:
    """Quirke sub-task annotations for operand digit arrays ``[n, w]`` (LSD first)."""
    n, w = da.shape
    col = da + db
    out: dict[str, np.ndarray] = {}
    carry = np.zeros((n, w + 1), dtype=np.int64)
    for i in range(w):
        carry[:, i + 1] = (col[:, i] + carry[:, i]) >= 10
    for i in range(w):
        out[f"SA_{i}"] = col[:, i] % 10
        out[f"SC_{i}"] = col[:, i] >= 10
        out[f"SS_{i}"] = col[:, i] == 9
        out[f"ST_{i}"] = np.where(col[:, i] < 9, 0, np.where(col[:, i] == 9, 1, 2))
    for i in range(w + 1):
        out[f"carry_in_{i}"] = carry[:, i]
    out["n_carries"] = carry.sum(axis=1)
    out["complexity"] = complexity_classes(col >= 10, col == 9)
    return out


def cascade_lengths(sc: np.ndarray, ss: np.ndarray) -> np.ndarray:
    """Longest run of sum-9 columns directly above a carry-making column, per row."""
    n, w = sc.shape
    # run[:, i]: consecutive SS columns starting at column i and going up
    run = np.zeros((n, w + 1), dtype=np.int64)
    for i in range(w - 1, -1, -1):
        run[:, i] = np.where(ss[:, i], run[:, i + 1] + 1, 0)
    fed = np.where(sc, run[:, 1:], -1)
    return fed.max(axis=1) if w else np.full(n, -1)


def complexity_classes(sc: np.ndarray, ss: np.ndarray) -> np.ndarray:
    """Quirke complexity class ``S0``..``S5`` per row (see the module docstring)."""
    longest = cascade_lengths(sc, ss)
    idx = np.where(longest < 0, 0, 1 + np.minimum(longest, 4))
    return np.asarray(COMPLEXITY_CLASSES, dtype=object)[idx]


def class_of_tricase(types: list[int] | tuple[int, ...]) -> str:
    """The complexity class of one tri-case pattern (LSD first: 0 '<9', 1 '=9', 2 '>=10')."""
    t = np.asarray([types], dtype=np.int64)
    return str(complexity_classes(t == 2, t == 1)[0])


def subtraction_columns(a: np.ndarray, b: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """Borrow annotations of ``max(a, b) - min(a, b)`` (see the module docstring)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    dm = digits_lsd(np.maximum(a, b), width)
    ds = digits_lsd(np.minimum(a, b), width)
    borrow = np.zeros((len(a), width), dtype=np.int64)
    prev = np.zeros(len(a), dtype=np.int64)
    for i in range(width):
        borrow[:, i] = (dm[:, i] - ds[:, i] - prev) < 0
        prev = borrow[:, i]
    out: dict[str, np.ndarray] = {f"borrow_{i}": borrow[:, i] for i in range(width)}
    out["n_borrows"] = borrow.sum(axis=1)
    out["negative"] = a < b
    da, db = digits_lsd(a, width), digits_lsd(b, width)
    prev = np.zeros(len(a), dtype=np.int64)
    for i in range(width):
        prev = ((da[:, i] - db[:, i] - prev) < 0).astype(np.int64)
        out[f"ab_borrow_{i}"] = prev
    for i in range(width):
        out[f"MD_{i}"] = (da[:, i] - db[:, i]) % 10
        out[f"MB_{i}"] = da[:, i] < db[:, i]
        out[f"MZ_{i}"] = da[:, i] == db[:, i]
        out[f"GT_{i}"] = da[:, i] > db[:, i]
        out[f"MT_{i}"] = np.where(da[:, i] > db[:, i], 0, np.where(da[:, i] == db[:, i], 1, 2))
    out["complexity"] = borrow_classes(borrow, dm == ds)
    return out


def borrow_classes(borrow: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Borrow-cascade class ``B0``..``B5`` per row from ``borrow[:, i]`` (column ``i`` borrows)
    and ``zero[:, i]`` (its digits of ``max - min`` are equal); see the module docstring."""
    n, w = borrow.shape
    fed = np.zeros((n, w), dtype=bool)  # a zero-difference column receiving a borrow
    fed[:, 1:] = borrow[:, :-1].astype(bool) & zero[:, 1:]
    run = np.zeros(n, dtype=np.int64)
    longest = np.zeros(n, dtype=np.int64)
    for i in range(w):
        run = np.where(fed[:, i], run + 1, 0)
        longest = np.maximum(longest, run)
    idx = np.where(borrow.any(axis=1), 1 + np.minimum(longest, 4), 0)
    return np.asarray(BORROW_CLASSES, dtype=object)[idx]


def multiplication_columns(
    da: np.ndarray, db: np.ndarray, answer_width: int
) -> dict[str, np.ndarray]:
    """Partial products, column sums and Bai et al.'s running sums ``c_hat_k``."""
    n, w = da.shape
    out: dict[str, np.ndarray] = {}
    sums = np.zeros((n, answer_width), dtype=np.int64)
    for i in range(w):
        for j in range(w):
            pp = da[:, i] * db[:, j]
            out[f"pp_{i}_{j}"] = pp
            if i + j < answer_width:
                sums[:, i + j] += pp
    c_hat = np.zeros(n, dtype=np.int64)
    for k in range(answer_width):
        c_hat = sums[:, k] + c_hat // 10
        out[f"s_{k}"] = sums[:, k]
        out[f"c_hat_{k}"] = c_hat
    return out


def annotate(
    operation: str,
    a: np.ndarray,
    b: np.ndarray,
    answers: np.ndarray,
    *,
    operand_width: int,
    answer_width: int,
) -> dict[str, np.ndarray]:
    """All ground-truth columns for ``a <op> b = answers`` (operation-specific ones included)."""
    da = digits_lsd(a, operand_width)
    db = digits_lsd(b, operand_width)
    dans = digits_lsd(answers, answer_width)
    out: dict[str, np.ndarray] = {}
    for i in range(operand_width):
        out[f"a_digit_{i}"] = da[:, i]
    for i in range(operand_width):
        out[f"b_digit_{i}"] = db[:, i]
    for i in range(answer_width):
        out[f"answer_digit_{i}"] = dans[:, i]
    out["n_answer_digits"] = np.array([len(str(abs(int(x)))) for x in answers], dtype=np.int64)
    if operation == "add":
        out.update(addition_columns(da, db))
    elif operation == "sub":
        out.update(subtraction_columns(a, b, operand_width))
    elif operation == "mul":
        out.update(multiplication_columns(da, db, answer_width))
    elif operation in ("floordiv", "mod"):
        out["quotient"] = np.asarray(a, dtype=np.int64) // np.asarray(b, dtype=np.int64)
        out["remainder"] = np.asarray(a, dtype=np.int64) % np.asarray(b, dtype=np.int64)
    elif operation == "modadd":
        out["raw_sum"] = np.asarray(a, dtype=np.int64) + np.asarray(b, dtype=np.int64)
    return out
