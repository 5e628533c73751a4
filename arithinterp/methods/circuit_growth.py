"""Growing a circuit so that float noise never decides it: ties, ranking and greedy look-ahead.

Two backends compute the same forward pass with different float rounding, so a score or a
faithfulness can differ between them by ~1e-7 of the metric's scale. Discovery must not turn
that into a different circuit. The rules (``docs/methods/circuits.md``):

* **Tolerance.** A normalised value ``(m - m_low) / (m_high - m_low)`` carries the float error
  of ``m``, about ``eps * max(|m_high|, |m_low|)``, divided by the span. Two normalised values
  closer than :func:`tie_tolerance` (``TIE_ULPS`` machine epsilons of the model's dtype, scaled
  that way; at least ``MIN_TOL``) are ties.
* **One tie rule: model order.** Tied components go in the order they sit in the model: by
  layer, heads before the MLP, then by head or neuron index (:func:`model_order`).
* **Ranking** (:func:`rank_components`): scores by size; a run of scores within the tolerance
  of the run's largest is one tie group, ordered by model order. Noise-level scores (a decoy's
  3e-8, a needed head's 3e-18) are one group.
* **Greedy growth** (:func:`grow_greedy`): each step adds the component that raises
  faithfulness most; candidates within the tolerance of the best are ties (rank order). When no
  single addition raises F by more than the tolerance (a conjunctive circuit: an AND of parts
  that each do nothing alone), it looks ahead at every pair of candidates (up to
  ``PAIR_LIMIT`` candidates) and adds the best pair. If no pair helps either (a conjunction of
  three or more), it adds candidates in rank order until F rises, then removes every one of them
  whose removal keeps that rise (a "block"). If nothing raises F, growth stops and the result
  says the target was not reached; it never fills up with the rest of the model.
* A value reaches the target when it is within the tolerance below it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from arithinterp.models import Site

__all__ = ["MIN_TOL", "PAIR_LIMIT", "TIE_ULPS", "grow_greedy", "grow_topk", "model_order", "rank_by_score",
           "rank_components", "tie_tolerance", "trivial_reason"]

#: Machine epsilons of float error a normalised value is allowed (before scaling by the span).
TIE_ULPS = 256
#: The smallest tolerance, whatever the dtype.
MIN_TOL = 1e-9
#: Greedy growth looks ahead at pairs only while at most this many candidates remain.
PAIR_LIMIT = 40


def tie_tolerance(high: float | None, low: float | None, dtype: torch.dtype = torch.float32) -> float:
    """The tolerance of values normalised by ``(m - low) / (high - low)`` (see the module doc)."""
    eps = float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(torch.finfo(torch.float32).eps)
    if high is None or low is None or not np.isfinite(high) or not np.isfinite(low) or high == low:
        return max(MIN_TOL, TIE_ULPS * eps)
    return max(MIN_TOL, TIE_ULPS * eps * max(1.0, abs(high), abs(low)) / abs(high - low))


def model_order(site: Site) -> tuple[int, int, int]:
    """Where a component sits in the model: layer, heads before the MLP, head or neuron index."""
    unit = site.head if site.head is not None else (site.neuron if site.neuron is not None else -1)
    return int(site.layer), 0 if site.kind == "attn_head" else 1, int(unit)


def rank_components(sites: Sequence[Site], scores: Sequence[float], tol: float) -> list[int]:
    """Indices of ``sites`` by score, largest first; ties (within ``tol``) in model order."""
    return rank_by_score(scores, tol, key=lambda i: model_order(sites[i]))


def rank_by_score(scores: Sequence[float], tol: float, key: Callable[[int], object] = lambda i: i) -> list[int]:
    """Indices by score, largest first: a run of scores within ``tol`` of the run's largest is one
    tie group, ordered by ``key`` (default: the index itself)."""
    by_size = sorted(range(len(scores)), key=lambda i: (-scores[i], key(i)))
    out: list[int] = []
    start = 0
    while start < len(by_size):
        top = scores[by_size[start]]
        stop = start
        while stop < len(by_size) and top - scores[by_size[stop]] <= tol:
            stop += 1
        out += sorted(by_size[start:stop], key=key)
        start = stop
    return out


def reaches(value: float, target: float, tol: float) -> bool:
    return bool(np.isfinite(value) and value >= target - tol)


def grow_topk(f_of: Callable[[list[int]], float], ranked: list[int], *, limit: int,
              step: Callable[[], None] = lambda: None) -> tuple[list[int], list[float], list[str]]:
    """Add components in rank order: the order, F after each addition, and the step log."""
    order, curve = [], []
    for i in ranked[:limit]:
        order.append(i)
        curve.append(f_of(order))
        step()
    return order, curve, ["topk"] * len(order)


def _first_within(candidates: list, values: list[float], tol: float):
    """The first candidate whose value is within ``tol`` of the best (``None`` if none is finite)."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return None, float("nan")
    best = max(finite)
    for c, v in zip(candidates, values):
        if np.isfinite(v) and v >= best - tol:
            return c, v
    return None, float("nan")  # unreachable: the best itself qualifies


def grow_greedy(f_of: Callable[[list[int]], float], ranked: list[int], *, limit: int, target: float, tol: float,
                step: Callable[[], None] = lambda: None) -> tuple[list[int], list[float], list[str]]:
    """Greedy growth with ties and pair look-ahead (module doc): order, curve, and how each
    component was chosen (``"greedy"``, ``"pair"`` or ``"block"``)."""
    order: list[int] = []
    curve: list[float] = []
    how: list[str] = []
    current = 0.0  # F of the empty circuit
    remaining = list(ranked)
    while remaining and len(order) < limit:
        trial = [f_of([*order, i]) for i in remaining]
        pick, f_pick = _first_within(remaining, trial, tol)
        if pick is not None and f_pick - current > tol:
            chosen = [(pick, f_pick, "greedy")]
        else:
            chosen = _look_ahead(f_of, order, remaining, trial, current=current, limit=limit, tol=tol)
        if not chosen:
            break  # no addition raises F: the target cannot be reached by growing
        for i, f, why in chosen:
            remaining.remove(i)
            order.append(i)
            curve.append(f)
            how.append(why)
            step()
        current = curve[-1] if np.isfinite(curve[-1]) else current
        if reaches(current, target, tol):
            break
    return order, curve, how


def _look_ahead(f_of, order: list[int], remaining: list[int], trial: list[float], *, current: float, limit: int,
                tol: float) -> list[tuple[int, float, str]]:
    """No single addition helps: the best pair (rank order breaks ties), else a pruned block."""
    if len(remaining) >= 2 and len(order) + 2 <= limit and len(remaining) <= PAIR_LIMIT:
        pairs = [(a, b) for k, a in enumerate(remaining) for b in remaining[k + 1:]]
        values = [f_of([*order, a, b]) for a, b in pairs]
        pair, f_pair = _first_within(pairs, values, tol)
        if pair is not None and f_pair - current > tol:
            a, b = pair
            return [(a, trial[remaining.index(a)], "pair"), (b, f_pair, "pair")]
    return _block(f_of, order, remaining, current=current, limit=limit, tol=tol)


def _block(f_of, order: list[int], remaining: list[int], *, current: float, limit: int,
           tol: float) -> list[tuple[int, float, str]]:
    """Add candidates in rank order until F rises by more than ``tol``, then drop every one of them
    whose removal keeps that rise (lowest ranked first): a conjunction of three or more parts.
    Nothing when no block raises F (growth stops: the target cannot be reached this way)."""
    block: list[int] = []
    f = current
    for i in remaining[:limit - len(order)]:
        block.append(i)
        f = f_of([*order, *block])
        if np.isfinite(f) and f - current > tol:
            break
    else:
        return []
    for j in sorted(block[:-1], key=remaining.index, reverse=True):
        rest = [k for k in block if k != j]
        if reaches(f_of([*order, *rest]), f, tol):
            block = rest
    curve = [f_of([*order, *block[:k + 1]]) for k in range(len(block) - 1)] + [f]
    return [(i, v, "block") for i, v in zip(block, curve)]


def trivial_reason(circuit: Sequence[Site], candidates: Sequence[Site]) -> str:
    """Why a circuit is trivial ("" if it is not): it is every candidate (the whole model), or
    exactly every candidate of one kind that has more than one (all heads, all MLPs, all neurons)."""
    members = set(circuit)
    if members and members >= set(candidates):
        return "the circuit is the whole model (every candidate component)"
    for kind, name in (("attn_head", "head"), ("mlp_out", "MLP"), ("mlp_post", "neuron")):
        of_kind = {s for s in candidates if s.kind == kind}
        if len(of_kind) > 1 and of_kind == members:
            return f"the circuit is every {name} and nothing else"
    return ""
