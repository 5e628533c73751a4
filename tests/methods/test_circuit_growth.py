"""Noise-proof, backend-invariant discovery: ties, conjunctive greedy growth, trivial circuits.

The growth rules are checked on synthetic faithfulness functions whose circuit is known and to
which float noise of ~1e-7 is added with different seeds (as two backends would); discovery is
then run end to end on both backends, on the planted models and on zoo models, and must return
the same circuit from each.
"""

from __future__ import annotations

import numpy as np
import pytest

from arithinterp.methods.circuit_growth import (
    grow_greedy,
    rank_components,
    tie_tolerance,
    trivial_reason,
)
from arithinterp.methods.circuits import discover_circuit
from arithinterp.models import Site, load_model
from arithinterp.planted import planted
from arithinterp.tasks import TaskSpec, generate, make_pairs

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SITES = [Site("attn_head", 0, head=h) for h in range(8)] + [Site("mlp_out", 0)]  # 9 components, MLP0 = 8
TOL = tie_tolerance(1.0, 0.0)


def _noisy(truth: set[int], seed: int, partial: dict[frozenset, float] | None = None):
    """F(S) = 1 when S holds every part of ``truth`` (an AND), else ``partial`` or 0; plus noise."""
    rng = np.random.default_rng(seed)
    noise: dict[frozenset, float] = {}

    def f_of(members):
        key = frozenset(members)
        if key not in noise:
            noise[key] = rng.normal(0, 1e-7)
        base = 1.0 if truth <= key else max([v for k, v in (partial or {}).items() if k <= key], default=0.0)
        return base + noise[key]

    return f_of


def test_tolerance_is_tied_to_the_metric_scale():
    assert tie_tolerance(1.0, 0.0) == pytest.approx(256 * 2.0 ** -23)
    # A metric whose values are large next to its span: the float error is relatively larger.
    assert tie_tolerance(101.0, 100.0) == pytest.approx(101 * tie_tolerance(1.0, 0.0))
    assert tie_tolerance(1.0, 1.0) > 0  # undefined span: still a positive tolerance


def test_noise_level_scores_are_ties_in_model_order():
    """Issue #12: a decoy's 3e-8 outranked a needed head's 3e-18; both are noise, so model order."""
    scores = [0.5, 3e-18, 3e-8, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert rank_components(SITES, scores, TOL) == [8, 0, 1, 2, 3, 4, 5, 6, 7]
    # Scores within the tolerance of each other tie; beyond it they are ordered by size.
    assert rank_components(SITES, [0.3, 0.3 + 1e-7, 0.3 + 1e-3, 0, 0, 0, 0, 0, 0], TOL)[:3] == [2, 0, 1]


@pytest.mark.parametrize("seed", range(8))
def test_greedy_and_of_two_needs_the_pair_look_ahead(seed):
    """F rises only when both heads are in (MLP0 alone is worth 0.2): no single head helps, the
    look-ahead adds the pair, and noise never picks a decoy."""
    f_of = _noisy({0, 1, 8}, seed, partial={frozenset({8}): 0.2})
    ranked = [5, 8, 3, 0, 1, 2, 4, 6, 7]  # a decoy ranked first (by noise)
    order, curve, how = grow_greedy(f_of, ranked, limit=9, target=0.99, tol=TOL)
    assert order == [8, 0, 1] and how == ["greedy", "pair", "pair"]
    assert curve[-1] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_greedy_and_of_three_adds_a_pruned_block(seed):
    """A three-way AND: no single or pair raises F; components are added in rank order until F
    rises, and the decoys among them are pruned."""
    f_of = _noisy({0, 1, 8}, seed)
    ranked = [5, 8, 3, 0, 6, 1, 2, 4, 7]
    order, curve, how = grow_greedy(f_of, ranked, limit=9, target=0.99, tol=TOL)
    assert order == [8, 0, 1] and set(how) == {"block"}
    assert curve[-1] == pytest.approx(1.0, abs=1e-6)


def test_unreachable_target_stops_and_says_so():
    f_of = _noisy({0, 1, 8}, 0, partial={frozenset({8}): 0.5})
    order, curve, how = grow_greedy(lambda m: min(f_of(m), 0.5 + 1e-8), [8, 0, 1, 2], limit=4, target=0.9,
                                    tol=TOL)
    assert order == [8]  # nothing after MLP0 raises F: growth stops instead of adding the rest


def test_trivial_circuits_are_named():
    assert trivial_reason(SITES, SITES) == "the circuit is the whole model (every candidate component)"
    assert trivial_reason(SITES[:8], SITES) == "the circuit is every head and nothing else"
    assert trivial_reason([SITES[0], SITES[8]], SITES) == ""
    assert trivial_reason(SITES[1:], SITES) == ""  # every head but one, and the MLP


# ---- end to end: both backends return the same circuit ----------------------------------------

PLANTED_CASES = ["and", "decoy", "backup", "negative", "compose"]


@pytest.mark.parametrize("grow", ["topk", "greedy"])
@pytest.mark.parametrize("name", PLANTED_CASES)
def test_planted_discovery_is_backend_invariant(name, grow):
    found = {}
    for backend in ("transformer_lens", "nnsight"):
        p = planted(name, backend=backend)
        found[backend] = p.discover(grow=grow)
    tl, nn = found["transformer_lens"], found["nnsight"]
    assert tl.circuit == nn.circuit and tl.chosen_by == nn.chosen_by
    assert tl.reached and not tl.trivial
    assert set(tl.circuit) <= set(p.truth)  # never a decoy
    if name != "negative":  # a negative head lowers F: a circuit without it is faithful
        assert set(tl.circuit) == set(p.truth) - {k for k, r in p.roles.items() if r == "backup"} | \
            ({"L0H0"} if name == "backup" else set())


def test_and_model_greedy_on_accuracy_needs_look_ahead():
    """On accuracy neither one nor two parts of the three-part AND score anything (exact ties):
    the pruned block finds all three, and nothing else."""
    p = planted("and")
    res = p.discover(grow="greedy", metric="accuracy")
    assert set(res.circuit) == set(p.truth) and res.reached and not res.trivial
    assert res.chosen_by == ["block"] * 3 and "conjunction of three" in res.note
    np.testing.assert_allclose(res.curve.values[:3], [0.0, 0.0, 1.0])


ZOO_CASES = {
    "add-2d-tok": (dict(operation="add", operand_range=(0, 99), format="plain", n=60, seed=7), "random", {},
                   "single"),
    "add-5d": (dict(operation="add", digits=5, format="fixed", n=32, seed=1), "digit", {"column": 2}, "multi"),
}


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_zoo_discovery_is_backend_invariant(name):
    spec, kind, pair_kw, answer = ZOO_CASES[name]
    prompts = generate(TaskSpec(**spec))
    pairs = make_pairs(prompts, kind, **pair_kw)
    for grow in ("topk", "greedy"):
        got = [discover_circuit(load_model(f"zoo:{name}", backend=b), pairs, prompts, answer=answer, grow=grow,
                                progress=False) for b in ("transformer_lens", "nnsight")]
        print(f"{name} {grow}: {got[0].circuit} F={got[0].circuit_faithfulness:.4f} "
              f"trivial={got[0].trivial} {got[0].note!r}")
        assert got[0].circuit == got[1].circuit and not got[0].trivial
        assert got[0].reached and got[0].circuit_faithfulness >= 0.9 - got[0].tolerance


def test_an_unreachable_target_is_a_result_that_says_so():
    """Target 1.5 on the AND model: greedy growth stops once nothing raises F (the three planted
    components, F = 1) and says the target was not reached; top-k growth tries every component and
    flags the whole model as trivial. Neither raises."""
    p = planted("and")
    greedy = p.discover(grow="greedy", target=1.5)
    assert not greedy.reached and set(greedy.circuit) == set(p.truth) and not greedy.trivial
    assert "target 1.5 was not reached" in greedy.note
    topk = p.discover(grow="topk", target=1.5)
    assert not topk.reached and topk.trivial and "whole model" in topk.note
    assert topk.summary()["note"] == topk.note
