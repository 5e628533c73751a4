"""Counterfactual pairs change what they say they change, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from arithinterp.errors import TaskError
from arithinterp.tasks import PAIR_KINDS, PromptSet, TaskSpec, generate, make_pairs

OPS = ("add", "sub", "mul", "floordiv", "mod")


def digits_of(frame, name: str, width: int) -> np.ndarray:
    return np.stack([frame[f"{name}_digit_{i}"].to_numpy() for i in range(width)], axis=1)


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("kind", PAIR_KINDS)
def test_every_kind_keeps_its_promise(operation, kind):
    ps = generate(TaskSpec(operation=operation, digits=3, n=60, seed=1))
    pairs = make_pairs(ps, kind, on_impossible="drop")
    assert len(pairs) + pairs.n_dropped == 60
    assert len(pairs) >= 30
    c, x = pairs.clean.frame, pairs.corrupt.frame
    assert list(c.prompt_id) == list(x.prompt_id)
    if kind == "same_answer":
        assert (c.answer == x.answer).all()
        assert (c.operand_a != x.operand_a).all()
        assert not ((c.operand_a == x.operand_b) & (c.operand_b == x.operand_a)).any()
    else:
        assert (c.answer != x.answer).all()
    if kind == "operand_a":
        assert (c.operand_b == x.operand_b).all() and (c.operand_a != x.operand_a).all()
    if kind == "operand_b":
        assert (c.operand_a == x.operand_a).all() and (c.operand_b != x.operand_b).all()
    if kind == "operator":
        assert (c.operand_a == x.operand_a).all() and (c.operand_b == x.operand_b).all()
        assert (c.operator != x.operator).all()
    # the corrupt prompts are valid problems of the same width, answered correctly
    for frame in (c, x):
        assert frame.operand_a.between(100, 999).all() and frame.operand_b.between(100, 999).all()
    assert [len(p) for p in pairs.clean.prompts] == [len(p) for p in pairs.corrupt.prompts]


@pytest.mark.parametrize("column", [0, 1, 2])
@pytest.mark.parametrize("operand", ["a", "b"])
def test_digit_pairs_change_exactly_the_chosen_column(column, operand):
    ps = generate(TaskSpec(operation="add", digits=3, format="fixed", n=80))
    pairs = make_pairs(ps, "digit", column=column, operand=operand)
    assert len(pairs) == 80 and pairs.n_dropped == 0
    c, x = pairs.clean.frame, pairs.corrupt.frame
    changed = digits_of(c, operand, 3) != digits_of(x, operand, 3)
    expected = np.zeros_like(changed)
    expected[:, column] = True
    assert (changed == expected).all()
    other = "b" if operand == "a" else "a"
    assert (digits_of(c, other, 3) == digits_of(x, other, 3)).all()
    assert set(pairs.changed_column) == {column}
    # fixed format: every string keeps its length, so token positions line up
    assert {len(p) for p in pairs.corrupt.prompts} == {len(pairs.clean.prompts[0])}
    assert {len(a) for a in pairs.corrupt.answers} == {len(pairs.clean.answers[0])}


def test_digit_pairs_with_random_columns_report_them():
    ps = generate(TaskSpec(digits=4, n=200))
    pairs = make_pairs(ps, "digit", seed=5)
    cols = np.asarray(pairs.changed_column)
    assert set(cols) == {0, 1, 2, 3}
    changed = digits_of(pairs.clean.frame, "a", 4) != digits_of(pairs.corrupt.frame, "a", 4)
    assert (changed.sum(axis=1) == 1).all()
    assert (changed.argmax(axis=1) == cols).all()
    assert (pairs.frame["changed_column"] == cols).all()
    # the leading digit never becomes 0 (the operand keeps its width)
    assert pairs.corrupt.frame.operand_a.between(1000, 9999).all()


def test_digit_column_outside_the_operands_is_rejected():
    ps = generate(TaskSpec(digits=3, n=5))
    with pytest.raises(TaskError, match=r"column 3 is outside the operands' columns 0\.\.2"):
        make_pairs(ps, "digit", column=3)


def test_fixed_format_corrupt_operands_keep_token_lengths_across_widths():
    ps = generate(TaskSpec(operation="add", digits=(1, 4), format="fixed", n=100))
    for kind in ("operand_a", "operand_b", "random", "same_answer", "digit"):
        pairs = make_pairs(ps, kind, on_impossible="drop")
        assert {len(p) for p in pairs.corrupt.prompts + pairs.clean.prompts} == {10}


def test_plain_format_corrupt_operands_keep_their_digit_count():
    ps = generate(TaskSpec(operation="add", digits=(1, 4), n=100))
    for kind in ("operand_a", "operand_b", "random", "same_answer"):
        pairs = make_pairs(ps, kind, on_impossible="drop")
        for col in ("operand_a", "operand_b"):
            clean = pairs.clean.frame[col].astype(str).str.len()
            corrupt = pairs.corrupt.frame[col].astype(str).str.len()
            assert (clean == corrupt).all(), kind
        assert [len(p) for p in pairs.clean.prompts] == [len(p) for p in pairs.corrupt.prompts]


def test_few_shot_prefix_is_shared_by_clean_and_corrupt():
    ps = generate(TaskSpec(digits=2, few_shot=2, n=20))
    pairs = make_pairs(ps, "random")
    for clean, corrupt, q1, q2 in zip(
        pairs.clean.prompts, pairs.corrupt.prompts,
        pairs.clean.frame["query"], pairs.corrupt.frame["query"],
    ):
        assert clean[: -len(q1)] == corrupt[: -len(q2)] and q1 != q2


def test_impossible_counterfactuals_raise_or_are_dropped_and_reported():
    ps = PromptSet.from_operands(TaskSpec(operation="mul", digits=(1, 2)), [7, 3, 6], [0, 4, 0])
    with pytest.raises(TaskError, match=r"2 of 3 prompts have no valid 'operand_a'.*'7\*0='"):
        make_pairs(ps, "operand_a")
    pairs = make_pairs(ps, "operand_a", on_impossible="drop")
    assert len(pairs) == 1 and pairs.dropped == (0, 2) and pairs.n_dropped == 2
    assert pairs.clean.prompts == ("3*4=",)
    with pytest.raises(TaskError, match="none of the 2 prompts"):
        make_pairs(ps[[0, 2]], "operand_a", on_impossible="drop")


def test_same_answer_for_multiplication_moves_factors():
    ps = PromptSet.from_operands(TaskSpec(operation="mul", digits=2), [12, 13], [24, 17])
    pairs = make_pairs(ps, "same_answer", on_impossible="drop")
    assert pairs.dropped == (1,)  # 221 = 13 * 17 has no other pair of 2-digit factors
    row = pairs.corrupt.frame.iloc[0]
    assert (row.operand_a, row.operand_b) in {(16, 18), (18, 16)}  # 288 = 12 * 24


@pytest.mark.parametrize("operation", ["floordiv", "mod", "sub", "modadd"])
def test_same_answer_inverts_other_operations(operation):
    fmt = "modular" if operation == "modadd" else "plain"
    digits = 3 if operation != "modadd" else 3
    ps = generate(TaskSpec(operation=operation, digits=digits, format=fmt, n=80))
    pairs = make_pairs(ps, "same_answer", on_impossible="drop")
    assert len(pairs) >= 40
    assert (pairs.clean.frame.answer == pairs.corrupt.frame.answer).all()
    assert (pairs.clean.frame.operand_a != pairs.corrupt.frame.operand_a).all()


def test_operator_pairs():
    ps = generate(TaskSpec(operation="add", digits=3, format="template", n=30))
    pairs = make_pairs(ps, "operator")
    assert set(pairs.corrupt.frame.operation) == {"sub"}
    assert pairs.corrupt.prompts[0].replace("minus", "plus") == pairs.clean.prompts[0]
    to_mul = make_pairs(ps, "operator", operator="mul")
    assert (to_mul.corrupt.frame.answer == ps.frame.operand_a * ps.frame.operand_b).all()
    custom = generate(TaskSpec(format="template", template="Sum {a} {b}:", n=3))
    with pytest.raises(TaskError, match="custom template"):
        make_pairs(custom, "operator")
    with pytest.raises(TaskError, match="own operation"):
        make_pairs(ps, "operator", operator="add")
    wide = generate(TaskSpec(operation="floordiv", digits=12, n=3))
    with pytest.raises(TaskError, match="cannot pair 'floordiv' prompts with operator 'mul'"):
        make_pairs(wide, "operator")
    assert len(make_pairs(wide, "operator", operator="sub", on_impossible="drop")) == 3
    mod = generate(TaskSpec(operation="modadd", format="modular", n=3))
    with pytest.raises(TaskError, match="modadd"):
        make_pairs(mod, "operator")


def test_option_errors():
    ps = generate(TaskSpec(n=3))
    with pytest.raises(TaskError, match="valid kinds: operand_a, operand_b, digit"):
        make_pairs(ps, "swap")
    with pytest.raises(TaskError, match="column only applies"):
        make_pairs(ps, "random", column=1)
    with pytest.raises(TaskError, match="on_impossible"):
        make_pairs(ps, "random", on_impossible="ignore")


def test_pairs_frame_subsets_and_seeds():
    ps = generate(TaskSpec(digits=3, n=40))
    pairs = make_pairs(ps, "digit", seed=2)
    frame = pairs.frame
    assert len(frame) == 40
    assert {"pair", "kind", "changed_column", "clean_prompt", "corrupt_prompt",
            "clean_answer", "corrupt_answer", "clean_carry_in_1"} <= set(frame.columns)
    sub = pairs[:10]
    assert len(sub) == 10 and sub.changed_column == pairs.changed_column[:10]
    again = make_pairs(ps, "digit", seed=2)
    assert again.corrupt.hash == pairs.corrupt.hash
    assert make_pairs(ps, "digit", seed=3).corrupt.hash != pairs.corrupt.hash
    assert "PromptPairs(n=40, kind='digit'" in repr(pairs)
