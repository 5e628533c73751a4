"""Nikankin et al.'s heuristics (ICLR 2025) over an operand grid, per operator, and their scores.

A heuristic is a set of the grid's problems: "the result lies in [40, 50)", "a ≡ 3 (mod 5)",
"a = b". A neuron's score for it is the share of its top-``k`` prompts that lie in the set
(:func:`topk_overlap`), on the neuron's KV map for result heuristics and on its K map for operand
heuristics (the paper's "HYBRID"). The grid holds the task's valid problems only
(:func:`~arithinterp.methods.grid.valid_cells`): a masked cell is in no heuristic and in no
top-``k``.

The families depend on the operator, as in the paper's code (``heuristics_classification.py``):

==========  ========================  ===========================  ===================================
operator    operand-range lengths     result-range lengths          result heuristics
==========  ========================  ===========================  ===================================
``+``       10 30 50 100 (of 300)     10 30 50 (of 600)             ranges, m mod n, digit patterns
``−``       10 30 50 100 (of 300)     10 30 50 (of 300)             ranges, m mod n, digit patterns
``×``       3 5 10 (of 300)           10 30 50 100 (of 1000)        the same, top ``min(|H|, side)``
``÷``       10 30 50 100 (of 300)     2 10 100 (of 300)             ranges and multi-result, top
                                                                    ``min(|H|, side)``, none with 0
==========  ========================  ===========================  ===================================

Lengths are rescaled from the paper's domain (operands in [0, 300), results up to the paper's
largest) to the grid's (at least 2), so a small model's grid gets ranges of the same relative
width. Every start is tried (the paper steps by a third of the length), so a planted range is
found exactly. ``×`` and ``÷`` results are imbalanced (half of the ÷ grid is 0), so their result
heuristics read the top ``min(|H|, side)`` prompts, ``side`` being the number of operand values
(the paper's "max_op" cap); ``÷`` has no result ``m mod n`` or digit patterns (too few results)
and drops result heuristics that contain 0 (``a < b``: an operand relation, not a result).
Every operator also has operand and both-operand ``m mod n``, operand digit patterns, ranges of
both operands and identical operands.

**Multi-result** (``÷`` only, the paper's ``is_multi_result_neuron``): the results of a neuron's
top prompts on its KV map (the top :data:`MULTI_RESULT_FRACTION` of the grid, the paper's 1000 of
300 × 299) are counted; if its ``n`` most frequent results (2 ≤ n ≤ 5) hold at least
:data:`MULTI_RESULT_SHARE` of them and its ``n − 1`` most frequent do not, it implements "result
in {r1, ..., rn}" with that share as its score. The set depends on the neuron, so each set found
is one more heuristic, scored for the neurons whose own set it is (0 for the others).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["FAMILIES", "MULTI_RESULT_FRACTION", "MULTI_RESULT_SHARE", "Heuristic", "OperatorFamilies",
           "heuristics", "multi_result_heuristics", "operator_families", "topk_overlap"]

MapKind = Literal["k", "kv"]

#: The paper's operand domain, [0, 300): range lengths are given on it.
PAPER_OPERAND_DOMAIN = 300
#: A heuristic holding share q of the grid scores q for a map that ignores it, so one holding
#: much more than half would pass t = 0.6 by chance (e.g. "hundreds digit = 0" when results stop
#: at 112); m mod 2 (one half, or just over on an odd grid) stays.
MAX_SHARE = 0.55
#: Multi-result: the share of its top prompts a neuron's few results must hold (the paper's 0.95).
MULTI_RESULT_SHARE = 0.95
#: Multi-result: how many top prompts are counted, as a share of the grid (the paper's top 1000 of
#: its 300 × 299 division problems).
MULTI_RESULT_FRACTION = 1000 / (300 * 299)
#: Multi-result: the set sizes tried.
MULTI_RESULT_SIZES = range(2, 6)


@dataclass(frozen=True)
class Heuristic:
    """A set of the grid's problems (``mask``), scored on the K or the KV map.

    ``k``: how many top prompts the score reads (``None``: ``|H|``); ``result_set``: the results of
    a multi-result heuristic (empty for the others).
    """

    name: str
    family: str
    map_kind: MapKind
    mask: np.ndarray
    k: int | None = None
    result_set: tuple[int, ...] = ()

    @property
    def top_k(self) -> int:
        return int(self.mask.sum()) if self.k is None else int(self.k)


@dataclass(frozen=True)
class OperatorFamilies:
    """The heuristic families of one operator (the paper's per-operator tables).

    ``operand_lengths`` are range lengths on operands in [0, 300); ``result_lengths`` on results
    in [0, ``result_domain``); ``cap_result_k``: result heuristics read the top ``min(|H|, side)``
    prompts; ``zero_result``: False drops the result heuristics that contain result 0.
    """

    operand_lengths: tuple[int, ...]
    result_lengths: tuple[int, ...]
    result_domain: int
    result_mod: bool = True
    result_pattern: bool = True
    cap_result_k: bool = False
    multi_result: bool = False
    zero_result: bool = True


FAMILIES: dict[str, OperatorFamilies] = {
    "add": OperatorFamilies((10, 30, 50, 100), (10, 30, 50), 600),
    "sub": OperatorFamilies((10, 30, 50, 100), (10, 30, 50), 300),
    "mul": OperatorFamilies((3, 5, 10), (10, 30, 50, 100), 1000, cap_result_k=True),
    "floordiv": OperatorFamilies((10, 30, 50, 100), (2, 10, 100), 300, result_mod=False, result_pattern=False,
                                 cap_result_k=True, multi_result=True, zero_result=False),
}


def operator_families(operation: str) -> OperatorFamilies:
    """The families of ``operation`` (``mod`` as ``floordiv``, ``modadd`` as ``add``)."""
    return FAMILIES[{"mod": "floordiv", "modadd": "add"}.get(operation, operation)]


def _ranges(lo: int, hi: int, lengths: Sequence[int], paper_domain: int) -> list[tuple[int, int]]:
    size = hi - lo + 1
    out = []
    for length in sorted({max(2, round(n * size / paper_domain)) for n in lengths}):
        # Every start, not the paper's stride of length // 3: a planted range is then
        # recovered exactly, and ranges of one length share one top-k threshold.
        out += [(s, s + length) for s in range(lo, hi + 2 - length)]
    return out


def _operand_heuristics(a: np.ndarray, b: np.ndarray, fam: OperatorFamilies,
                        moduli: Sequence[int]) -> list[Heuristic]:
    out: list[Heuristic] = []
    lo, hi = int(min(a.min(), b.min())), int(max(a.max(), b.max()))
    for s, e in _ranges(lo, hi, fam.operand_lengths, PAPER_OPERAND_DOMAIN):
        in_a, in_b = (a >= s) & (a < e), (b >= s) & (b < e)
        out += [Heuristic(f"a in [{s},{e})", "operand_range", "k", in_a),
                Heuristic(f"b in [{s},{e})", "operand_range", "k", in_b),
                Heuristic(f"a,b in [{s},{e})", "operand_range", "k", in_a & in_b)]
    for n in moduli:
        for m in range(n):
            out += [Heuristic(f"a = {m} mod {n}", "operand_mod", "k", a % n == m),
                    Heuristic(f"b = {m} mod {n}", "operand_mod", "k", b % n == m),
                    Heuristic(f"a,b = {m} mod {n}", "operand_mod", "k", (a % n == m) & (b % n == m))]
    # Digit patterns (the paper's ".d." wildcards): one digit fixed, the others free.
    for place, label in ((1, "units"), (10, "tens"), (100, "hundreds")):
        for d in range(10):
            out += [Heuristic(f"a {label} digit = {d}", "operand_pattern", "k", a // place % 10 == d),
                    Heuristic(f"b {label} digit = {d}", "operand_pattern", "k", b // place % 10 == d)]
    out.append(Heuristic("a = b", "identical_operands", "k", a == b))
    return out


def _result_heuristics(r: np.ndarray, fam: OperatorFamilies, moduli: Sequence[int]) -> list[Heuristic]:
    out = [Heuristic(f"result in [{s},{e})", "result_range", "kv", (r >= s) & (r < e))
           for s, e in _ranges(int(r.min()), int(r.max()), fam.result_lengths, fam.result_domain)]
    if fam.result_mod:
        out += [Heuristic(f"result = {m} mod {n}", "result_mod", "kv", r % n == m) for n in moduli for m in range(n)]
    if fam.result_pattern:
        out += [Heuristic(f"result {label} digit = {d}", "result_pattern", "kv", r // place % 10 == d)
                for place, label in ((1, "units"), (10, "tens"), (100, "hundreds")) for d in range(10)]
    if not fam.zero_result:
        out = [h for h in out if not (h.mask & (r == 0)).any()]
    return out


def heuristics(
    a: np.ndarray, b: np.ndarray, r: np.ndarray, *, moduli: Sequence[int] = range(2, 11), operation: str = "add",
) -> list[Heuristic]:
    """The fixed heuristic families of ``operation`` over the problems ``(a, b)`` with results ``r``
    (the grid's valid cells only), in the order: result heuristics, then operand heuristics.

    Masks that repeat (``units digit = d`` is ``≡ d mod 10``) are kept once, the first; a mask
    that is empty or holds more than :data:`MAX_SHARE` of the problems is dropped. Multi-result
    heuristics depend on the neuron: :func:`multi_result_heuristics`.
    """
    a, b, r = (np.asarray(x, dtype=np.int64) for x in (a, b, r))
    fam = operator_families(operation)
    side = len(np.unique(np.concatenate([a, b])))
    out = _result_heuristics(r, fam, moduli)
    if fam.cap_result_k:
        out = [Heuristic(h.name, h.family, h.map_kind, h.mask, k=min(int(h.mask.sum()), side)) for h in out]
    out += _operand_heuristics(a, b, fam, moduli)
    seen: set[tuple[str, bytes]] = set()
    kept = []
    for h in out:
        key = (h.map_kind, np.packbits(h.mask).tobytes())
        if 0 < h.mask.sum() <= MAX_SHARE * len(a) and key not in seen:
            seen.add(key)
            kept.append(h)
    return kept


def _topk_weights(values: np.ndarray, k: int) -> np.ndarray:
    """``[row, prompt]``: 1 for a prompt above the row's k-th value, the tie share for one tied
    with it (the expectation under a random tie-break), else 0; each row sums to ``k``."""
    kth = -np.sort(-values, axis=1)[:, k - 1 : k]
    above, tied = values > kth, values == kth
    share = (k - above.sum(1)) / np.maximum(tied.sum(1), 1)
    return above + tied * share[:, None]


def topk_overlap(values: np.ndarray, masks: np.ndarray, k: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """``|top-k ∩ H| / k`` for every row of ``values`` ``[neuron, prompt]`` and every
    heuristic mask of ``masks`` ``[heuristic, prompt]``: ``[neuron, heuristic]``.

    ``k``: one per mask (default: ``|H|``). Ties at the k-th value are shared in proportion (the
    expectation under a random tie-break). Masks of one ``k`` share one threshold, so the cost
    is one comparison per distinct ``k`` and a matrix product.
    """
    masks = np.atleast_2d(masks).astype(bool)
    ks = masks.sum(1) if k is None else np.asarray(k, dtype=np.int64)
    if ks.shape != (masks.shape[0],) or (ks < 1).any() or (ks > values.shape[1]).any():
        raise ValueError(f"k must give one size in 1..{values.shape[1]} per mask, got {ks}")
    desc = -np.sort(-values, axis=1)
    out = np.zeros((values.shape[0], masks.shape[0]))
    # Counts of 0/1 products are integers below 2**24, so float32 matmuls are exact (and
    # several times faster than float64 on a grid of ~10^4 prompts and ~10^3 heuristics).
    mask32 = masks.T.astype(np.float32)
    for kk in np.unique(ks):
        cols = np.flatnonzero(ks == kk)
        kth = desc[:, kk - 1 : kk]
        above, tied = values > kth, values == kth
        n_tied = tied.sum(1)
        share = (kk - above.sum(1)) / np.maximum(n_tied, 1)
        m = mask32[:, cols]
        counts = (above.astype(np.float32) @ m).astype(np.float64)
        single = np.flatnonzero(n_tied == 1)  # the usual case: only the k-th value itself
        if single.size:
            where = tied[single].argmax(1)
            counts[single] += m[where].astype(np.float64) * share[single, None]
        rows = np.flatnonzero(n_tied > 1)
        if rows.size:
            counts[rows] += (tied[rows].astype(np.float32) @ m).astype(np.float64) * share[rows, None]
        out[:, cols] = counts / kk
    return out


def multi_result_heuristics(kv: np.ndarray, r: np.ndarray, *, operation: str = "floordiv"
                            ) -> tuple[list[Heuristic], np.ndarray]:
    """The multi-result heuristics the neurons of ``kv`` (``[neuron, prompt]`` KV maps over the
    problems with results ``r``) implement, and their scores ``[neuron, heuristic]``.

    Empty for an operator without the family. A neuron's score is the share of its top prompts
    that its own set holds (at least :data:`MULTI_RESULT_SHARE`), 0 on the other neurons' sets.
    """
    r = np.asarray(r, dtype=np.int64)
    fam = operator_families(operation)
    if not fam.multi_result:
        return [], np.zeros((kv.shape[0], 0))
    k = min(max(1, round(MULTI_RESULT_FRACTION * len(r))), len(r))
    results, inverse = np.unique(r, return_inverse=True)
    onehot = np.zeros((len(r), len(results)))
    onehot[np.arange(len(r)), inverse] = 1.0
    share = _topk_weights(np.asarray(kv, dtype=float), k) @ onehot / k  # [neuron, result]
    order = np.argsort(-share, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(share, order, 1), 1)
    found: dict[tuple[int, ...], list[tuple[int, float]]] = {}
    for neuron in range(kv.shape[0]):
        for n in MULTI_RESULT_SIZES:
            if n <= len(results) and cum[neuron, n - 2] < MULTI_RESULT_SHARE <= cum[neuron, n - 1] + 1e-12:
                members = tuple(sorted(int(x) for x in results[order[neuron, :n]]))
                if fam.zero_result or 0 not in members:
                    found.setdefault(members, []).append((neuron, float(cum[neuron, n - 1])))
                break
    hs, scores = [], np.zeros((kv.shape[0], len(found)))
    for j, (members, hits) in enumerate(sorted(found.items())):
        hs.append(Heuristic("result in {" + ", ".join(map(str, members)) + "}", "multi_result", "kv",
                            np.isin(r, members), k=k, result_set=members))
        for neuron, score in hits:
            scores[neuron, j] = min(score, 1.0)
    return hs, scores
