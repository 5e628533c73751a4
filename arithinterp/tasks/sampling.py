"""Drawing operands: uniform sampling, and carry- or borrow-balanced construction.

Uniform sampling of 5-digit addition almost never yields a long carry
cascade (measured: S0 4 %, S1 79 %, S2 15 %, S3 1.2 %, S4 0.08 %, S5 under 0.01 %), so the balanced modes
build operands column by column instead of rejection-sampling them:

* ``balance_classes``: each complexity class ``S0``..``S5`` that the widths
  allow gets an equal share. A class is realised by a *tri-case pattern* (per
  column: sum < 9, = 9 or >= 10): for ``S2``..``S5`` a carry-making column
  ``j`` followed by 1, 2, 3 or 4 sum-9 columns; for ``S1`` some carry-making
  column with no sum-9 column above it. The other columns get random types
  (re-drawn, then set to "< 9", if they would start a longer cascade), and
  each column's digit pair is drawn uniformly among the pairs of its type.
  Classes no operand width can hold are skipped: ``S_k`` for ``k >= 2``
  needs ``k`` columns, so 3-digit addition balances ``S0``..``S3``.
* ``balance_carries``: each achievable number of carries ``0..w`` gets an equal
  share. The set of columns that send a carry on is drawn uniformly among the
  sets the digit constraints allow, then digit pairs are drawn uniformly
  among those that produce exactly that carry-out given the carry-in.

With a width range (``digits=(lo, hi)``) each prompt's operand widths are
drawn uniformly among the width pairs that can hold its target class.

Subtraction (``balance_classes`` only) balances the borrow-cascade classes
``B0``..``B5`` of ``max(a, b) - min(a, b)`` the same way: per column of (larger,
smaller) digits a column *makes* a borrow (``m < s``), *passes* one on (``m = s``)
or *absorbs* it (``m > s``), exactly as a column makes, passes or absorbs a carry,
so ``B_k`` is the pattern of ``S_k`` with one more rule: no borrow leaves the top
column (the highest column that is not "pass" absorbs), since the larger operand is
the larger. ``B_k`` (``k >= 1``) therefore needs ``k + 1`` columns: 5-digit
subtraction balances ``B0``..``B4``. With ``allow_negative`` half of each class,
drawn at random, is written ``min - max``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial

import numpy as np

from arithinterp.errors import TaskError
from arithinterp.tasks.arithmetic import BORROW_CLASSES, COMPLEXITY_CLASSES, class_of_tricase
from arithinterp.tasks.spec import TaskSpec

# ---- operand domains ---------------------------------------------------------------


@dataclass(frozen=True)
class OperandDomain:
    """Where one operand of a spec lives: digit widths, or an explicit value range."""

    lo: int
    hi: int
    widths: tuple[int, ...] | None  # None: uniform on lo..hi; else width first, then value

    @classmethod
    def of(cls, spec: TaskSpec, which: str) -> OperandDomain:
        nonzero = which == "b" and spec.operation in ("floordiv", "mod")
        vr = spec.value_range
        if vr is not None:
            lo, hi = vr
            return cls(max(lo, 1) if nonzero else lo, hi, None)
        wlo, whi = spec.digit_range
        lo = 0 if wlo == 1 else 10 ** (wlo - 1)
        return cls(max(lo, 1) if nonzero else lo, 10**whi - 1, tuple(range(wlo, whi + 1)))

    def width_bounds(self, width: int) -> tuple[int, int]:
        """Values of exactly ``width`` digits inside the domain (may be empty: lo > hi)."""
        lo = 0 if width == 1 else 10 ** (width - 1)
        return max(lo, self.lo), min(10**width - 1, self.hi)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.widths is None:
            return rng.integers(self.lo, self.hi, size=n, endpoint=True, dtype=np.int64)
        w = rng.choice(np.asarray(self.widths), size=n)
        bounds = np.array([self.width_bounds(int(x)) for x in self.widths], dtype=np.int64)
        pos = w - self.widths[0]
        return rng.integers(bounds[pos, 0], bounds[pos, 1], endpoint=True, dtype=np.int64)


def sample_operands(spec: TaskSpec, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Operands ``(a, b)`` for ``n`` prompts following ``spec.sampling``."""
    if spec.sampling == "uniform":
        a = OperandDomain.of(spec, "a").sample(rng, n)
        b = OperandDomain.of(spec, "b").sample(rng, n)
        if spec.operation == "sub" and not spec.allow_negative:
            a, b = np.maximum(a, b), np.minimum(a, b)
        return a, b
    widths = tuple(range(spec.digit_range[0], spec.digit_range[1] + 1))
    if spec.sampling == "balance_classes" and spec.operation == "sub":
        pattern = partial(_pattern_for_class, rule=_BORROWS)
        hi, lo = _balanced(rng, n, widths, list(BORROW_CLASSES), pattern, larger_first=True)
        if not spec.allow_negative:
            return hi, lo
        swap = rng.random(n) < 0.5
        return np.where(swap, lo, hi), np.where(swap, hi, lo)
    if spec.sampling == "balance_classes":
        return _balanced(rng, n, widths, _class_targets(widths), _pattern_for_class)
    return _balanced(rng, n, widths, _carry_targets(widths), _pattern_for_carries)


# ---- per-column digit constraints ----------------------------------------------------

# A column's digit set: 0 "no digit here" ({0}), 1 "leading digit" (1..9), 2 "any" (0..9)
_DIGIT_SETS = {0: (0,), 1: tuple(range(1, 10)), 2: tuple(range(10))}


def _column_kinds(width: int, ncols: int) -> tuple[int, ...]:
    kinds = []
    for i in range(ncols):
        if i >= width:
            kinds.append(0)
        elif i == width - 1 and width > 1:
            kinds.append(1)
        else:
            kinds.append(2)
    return tuple(kinds)


def _group_pairs(ka: int, kb: int, kind: Callable[[int, int], int]) -> dict[int, np.ndarray]:
    """A column's digit pairs grouped by ``kind(x, y)``: 0 absorbs, 1 passes on, 2 makes."""
    groups: dict[int, list[tuple[int, int]]] = {0: [], 1: [], 2: []}
    for x in _DIGIT_SETS[ka]:
        for y in _DIGIT_SETS[kb]:
            groups[kind(x, y)].append((x, y))
    return {t: np.array(v, dtype=np.int64).reshape(-1, 2) for t, v in groups.items()}


@cache
def _pairs_by_type(ka: int, kb: int) -> dict[int, np.ndarray]:
    """Digit pairs of a column grouped by tri-case type (0 '<9', 1 '=9', 2 '>=10')."""
    return _group_pairs(ka, kb, lambda x, y: 0 if x + y < 9 else 1 if x + y == 9 else 2)


@cache
def _pairs_by_borrow(km: int, ks: int) -> dict[int, np.ndarray]:
    """(larger, smaller) digit pairs of a column by what it does with a borrow (0 absorbs it,
    ``m > s``; 1 passes it on, ``m = s``; 2 makes one, ``m < s``): the tri-case types of subtraction."""
    return _group_pairs(km, ks, lambda x, y: 0 if x > y else 1 if x == y else 2)


@dataclass(frozen=True)
class _ClassRule:
    """How a column's digit pair makes (2), passes (1) or absorbs (0) a carry or a borrow."""

    classes: tuple[str, ...]
    pairs: Callable[[int, int], dict[int, np.ndarray]]
    top_absorbs: bool  # nothing may leave the top column (a borrow of larger - smaller)


_CARRIES = _ClassRule(COMPLEXITY_CLASSES, _pairs_by_type, top_absorbs=False)
_BORROWS = _ClassRule(BORROW_CLASSES, _pairs_by_borrow, top_absorbs=True)


def _top_absorbs(pattern: list[int]) -> bool:
    """The highest column that does not pass a borrow on absorbs it (or every column passes)."""
    return next((t == 0 for t in reversed(pattern) if t != 1), True)


@cache
def _pairs_by_carry(ka: int, kb: int, cin: int) -> dict[int, np.ndarray]:
    """Digit pairs of a column grouped by carry-out, given the carry-in."""
    groups: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
    for x in _DIGIT_SETS[ka]:
        for y in _DIGIT_SETS[kb]:
            groups[int(x + y + cin >= 10)].append((x, y))
    return {t: np.array(v, dtype=np.int64).reshape(-1, 2) for t, v in groups.items()}


@dataclass(frozen=True)
class _Columns:
    """The digit constraints of one (width_a, width_b) pair."""

    kinds: tuple[tuple[int, int], ...]  # per column (kind of a digit, kind of b digit)

    @classmethod
    def of(cls, wa: int, wb: int) -> _Columns:
        n = max(wa, wb)
        return cls(tuple(zip(_column_kinds(wa, n), _column_kinds(wb, n))))

    def types(self, i: int, pairs: Callable[[int, int], dict[int, np.ndarray]] = _pairs_by_type) -> set[int]:
        return {t for t, v in pairs(*self.kinds[i]).items() if len(v)}


# ---- balanced construction -----------------------------------------------------------


def _balanced(rng, n, widths, targets, make_pattern, *, larger_first: bool = False):
    """Equal shares of ``targets``; each prompt gets a width pair able to hold its target
    (with ``larger_first`` the first operand is at least as wide as the second)."""
    feasible: dict[object, list[tuple[int, int]]] = {}
    for target in targets:
        pairs = [
            (wa, wb) for wa in widths for wb in widths
            if (wa >= wb or not larger_first) and make_pattern(None, _Columns.of(wa, wb), target) is not None
        ]
        if pairs:
            feasible[target] = pairs
    if not feasible:  # pragma: no cover - S0 / zero carries is always feasible
        raise TaskError("no balanced target is achievable for these widths")
    order = list(feasible)
    labels = [order[i % len(order)] for i in range(n)]
    rng.shuffle(labels)
    a = np.zeros(n, dtype=np.int64)
    b = np.zeros(n, dtype=np.int64)
    for row, target in enumerate(labels):
        pairs = feasible[target]
        wa, wb = pairs[int(rng.integers(len(pairs)))]
        cols = _Columns.of(wa, wb)
        da, db = make_pattern(rng, cols, target)
        a[row] = sum(int(d) * 10**i for i, d in enumerate(da))
        b[row] = sum(int(d) * 10**i for i, d in enumerate(db))
    return a, b


def _class_targets(widths: tuple[int, ...]) -> list[str]:
    return list(COMPLEXITY_CLASSES)


def _carry_targets(widths: tuple[int, ...]) -> list[int]:
    return list(range(max(widths) + 1))


def _draw(rng: np.random.Generator, pairs: np.ndarray) -> tuple[int, int]:
    x, y = pairs[int(rng.integers(len(pairs)))]
    return int(x), int(y)


def _pattern_for_class(rng, cols: _Columns, target: str, rule: _ClassRule = _CARRIES):
    """Digits realising class ``target`` of ``rule`` (addition's ``S``, subtraction's ``B``);
    with ``rng=None`` only test feasibility."""
    w = len(cols.kinds)
    level = rule.classes.index(target)
    allowed = [cols.types(i, rule.pairs) for i in range(w)]
    stops = [allowed[i] - {1} - ({2} if rule.top_absorbs and i == w - 1 else set()) for i in range(w)]
    anchors: list[int] = []
    if level == 0:
        anchors = [-1] if all(0 in s or 1 in s for s in allowed) else []
    else:
        run = max(level - 1, 0)
        for j in range(w):
            if 2 not in allowed[j] or j + run >= w:
                continue
            if not all(1 in allowed[k] for k in range(j + 1, j + run + 1)):
                continue
            above = j + run + 1
            if rule.top_absorbs and above >= w:  # a borrow cannot leave the top column
                continue
            # S1..S4 need the column above the run to stop it (S5 may run on)
            if level < 5 and above < w and not stops[above]:
                continue
            anchors.append(j)
    if not anchors:
        return None
    if rng is None:
        return True
    j = anchors[int(rng.integers(len(anchors)))]
    fixed: dict[int, int] = {}
    if level >= 1:
        run = level - 1
        fixed[j] = 2
        for k in range(j + 1, j + run + 1):
            fixed[k] = 1
        above = j + run + 1
        if level < 5 and above < w:
            fixed[above] = int(rng.choice(sorted(stops[above])))
    free = [i for i in range(w) if i not in fixed]
    free_types = [sorted(allowed[i] - ({2} if level == 0 else set())) for i in free]
    for attempt in range(20):
        types = dict(fixed)
        for i, opts in zip(free, free_types):
            # the last attempt falls back to '<9' everywhere, which never adds a cascade
            types[i] = int(rng.choice(opts)) if attempt < 19 else min(opts)
        pattern = [types[i] for i in range(w)]
        if class_of_tricase(pattern) == COMPLEXITY_CLASSES[level] and (not rule.top_absorbs
                                                                       or _top_absorbs(pattern)):
            break
    else:  # pragma: no cover - the fallback pattern always has the target class
        raise AssertionError(f"could not realise {target} with columns {cols}")
    digits = [_draw(rng, rule.pairs(*cols.kinds[i])[pattern[i]]) for i in range(w)]
    return [d[0] for d in digits], [d[1] for d in digits]


def _carry_pattern_counts(cols: _Columns) -> list[list[list[int]]]:
    """``count[i][cin][k]``: carry patterns for columns ``i..`` with ``k`` more carries."""
    w = len(cols.kinds)
    count = [[[0] * (w + 2) for _ in range(2)] for _ in range(w + 1)]
    count[w][0][0] = count[w][1][0] = 1
    for i in range(w - 1, -1, -1):
        for cin in (0, 1):
            if i == 0 and cin:
                continue
            groups = _pairs_by_carry(*cols.kinds[i], cin)
            for k in range(w + 1):
                total = 0
                for cout in (0, 1):
                    if len(groups[cout]) and k - cout >= 0:
                        total += count[i + 1][cout][k - cout]
                count[i][cin][k] = total
    return count


def _pattern_for_carries(rng, cols: _Columns, target: int):
    """Digits with exactly ``target`` carries; uniform over the feasible carry patterns."""
    count = _carry_pattern_counts(cols)
    if target > len(cols.kinds) or count[0][0][target] == 0:
        return None
    if rng is None:
        return True
    da, db = [], []
    cin, left = 0, target
    for i in range(len(cols.kinds)):
        groups = _pairs_by_carry(*cols.kinds[i], cin)
        weights = [
            count[i + 1][cout][left - cout] if len(groups[cout]) and left - cout >= 0 else 0
            for cout in (0, 1)
        ]
        total = math.fsum(weights)
        cout = 0 if rng.random() * total < weights[0] else 1
        x, y = _draw(rng, groups[cout])
        da.append(x)
        db.append(y)
        cin, left = cout, left - cout
    return da, db
