"""Subtraction, mixed and multi-operator zoo tasks against literal oracles: borrow
classes column by column, token layouts from strings, Bai et al.'s running sums, and
the per-operator splits of ``ops_tok``."""

from __future__ import annotations

import numpy as np
import pytest

from arithinterp.tasks.arithmetic import multiplication_columns, subtraction_columns
from arithinterp.zoo.data import (
    OPS_TOK_OPERATORS,
    TaskFormat,
    borrow_cascade_operands,
    borrow_class,
    borrow_into,
    digits,
    ops_tok_pairs,
    running_sums,
    sample_subtraction_operands,
)
from arithinterp.zoo.evaluate import task_pairs
from arithinterp.zoo.modeling import build_tokenizer_for
from arithinterp.zoo.recipe import TaskSpec


def literal_borrow_class(a: int, b: int, n: int) -> int:
    """Schoolbook subtraction of the smaller from the larger, one column at a time."""
    hi, lo = max(a, b), min(a, b)
    borrow, run, longest, any_borrow = 0, 0, 0, False
    for i in range(n):
        dh, dl = (hi // 10**i) % 10, (lo // 10**i) % 10
        run = run + 1 if (borrow and dh == dl) else 0
        longest = max(longest, run)
        borrow = int(dh - dl - borrow < 0)
        any_borrow = any_borrow or bool(borrow)
    return 0 if not any_borrow else 1 + min(longest, 4)


def test_known_borrow_examples():
    a = np.array([54321, 100, 10000, 23, 5, 1000])
    b = np.array([12345, 1, 1, 45, 5, 999])
    # 54321-12345: borrows into columns 1 and 2, column 2 is 3 vs 3 -> one zero column (B2);
    # 100-1: a borrow into the 0-vs-0 tens column -> B2; 10000-1: through the three 0-vs-0
    # columns 1..3 (column 4 is 1 vs 0) -> B4; 45-23 and 5-5: no borrow; 1000-999:
    # borrows, but every column is 0 vs 9, never a zero difference -> B1
    assert borrow_class(a, b, 5).tolist() == [2, 2, 4, 0, 0, 1]
    assert borrow_into(np.array([100]), np.array([1]), 5).tolist() == [
        [False, True, True, False, False]
    ]


@pytest.mark.parametrize("enrich", [0.0, 0.4, 0.9])
def test_borrow_class_matches_literal_oracle(enrich):
    rng = np.random.default_rng(2)
    a, b = sample_subtraction_operands(rng, 3000, 5, enrich_pair_fraction=enrich)
    assert borrow_class(a, b, 5).tolist() == [
        literal_borrow_class(int(x), int(y), 5) for x, y in zip(a, b)
    ]


def test_borrows_agree_with_the_task_generator():
    """The zoo and arithinterp.tasks compute borrows independently; they must agree."""
    a, b = sample_subtraction_operands(np.random.default_rng(3), 5000, 5, enrich_pair_fraction=0.5)
    cols = subtraction_columns(a, b, 5)
    into = borrow_into(a, b, 5)
    assert not into[:, 0].any()
    for i in range(4):  # the task's borrow_i is the borrow into column i + 1
        assert (into[:, i + 1] == cols[f"borrow_{i}"].astype(bool)).all()


def test_enrichment_makes_borrow_cascades_common():
    rng = np.random.default_rng(0)
    plain = borrow_class(*sample_subtraction_operands(rng, 50_000, 5), 5)
    rich = borrow_class(*sample_subtraction_operands(rng, 50_000, 5, enrich_pair_fraction=0.4), 5)
    assert (rich >= 3).mean() > 5 * (plain >= 3).mean()


@pytest.mark.parametrize("cls", range(5))
def test_borrow_cascades_are_exactly_their_class(cls):
    a, b = borrow_cascade_operands(np.random.default_rng(cls), 600, 5, cls)
    assert len(a) == 600 and (borrow_class(a, b, 5) == cls).all()
    assert 0.4 < (a < b).mean() < 0.6  # half of them negative


def test_b5_needs_six_digits():
    """A borrow through 4 zero columns of 5 digits would leave the top: impossible."""
    with pytest.raises(ValueError, match="at least 6 digits"):
        borrow_cascade_operands(np.random.default_rng(0), 10, 5, 5)
    a, b = borrow_cascade_operands(np.random.default_rng(0), 50, 6, 5)
    assert (borrow_class(a, b, 6) == 5).all()


def _ids_from_text(fmt: TaskFormat, a: int, b: int, op: int) -> list[int]:
    tok = build_tokenizer_for(fmt)
    text = fmt.prompt_text(a, b, op) + fmt.answer_text(a, b, op)
    return tok(text, add_special_tokens=False)["input_ids"]


def _literal_answer(kind: str, a: int, b: int, n: int | None) -> str:
    if n is None:  # number tokens: the plain value
        return str({"add": a + b, "sub": a - b, "mul": a * b, "floordiv": a // b}[kind])
    if kind == "add":
        return str(a + b).zfill(n + 1)
    if kind == "sub":
        return ("-" if a < b else "+") + str(abs(a - b)).zfill(n)
    if kind == "mul":
        return str(a * b).zfill(2 * n)
    return str(a // b)


@pytest.mark.parametrize(
    "task",
    [
        TaskSpec(kind="sub", n_digits=5),
        TaskSpec(kind="addsub", n_digits=4),
        TaskSpec(kind="mul", n_digits=3, answer_order="msd"),
        TaskSpec(kind="mul", n_digits=3),
        TaskSpec(kind="ops_tok", max_operand=100, max_result=999, train_fraction=0.8),
    ],
    ids=lambda t: f"{t.kind}-{t.answer_order}",
)
def test_sequences_equal_the_tokenized_strings(task):
    fmt = TaskFormat.from_task(task)
    rng = np.random.default_rng(4)
    hi = 10 ** (fmt.n_digits or 2)
    a, b = rng.integers(0, hi, 200), rng.integers(1, hi, 200)
    op = rng.integers(0, len(fmt.ops), 200)
    if fmt.kind == "ops_tok":  # keep results one token
        a, b = a % 30, b % 30 + 1
        a = np.where((op == 1) & (a < b), b, a)
    seqs = fmt.sequences(a, b, op if len(fmt.ops) > 1 else None)
    for row, x, y, o in zip(seqs, a, b, op):
        o = int(o) if len(fmt.ops) > 1 else 0
        assert row.tolist() == _ids_from_text(fmt, int(x), int(y), o)
        name = fmt.ops[o]
        want = _literal_answer(name, int(x), int(y), fmt.n_digits)
        if name == "mul" and not fmt.msd_first:
            want = want[::-1]
        assert fmt.answer_text(int(x), int(y), o) == want


def test_running_sums_are_bai_et_al_and_spell_the_product():
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 1000, 2000), rng.integers(0, 1000, 2000)
    c_hat = running_sums(a, b, 3)
    assert ((c_hat % 10) == digits(a * b, 6, lsd_first=True)).all()
    cols = multiplication_columns(digits(a, 3, lsd_first=True), digits(b, 3, lsd_first=True), 6)
    for k in range(6):
        assert (c_hat[:, k] == cols[f"c_hat_{k}"]).all()
    assert running_sums(np.array([123]), np.array([456]), 3).tolist() == [[18, 28, 30, 16, 5, 0]]


def test_ops_tok_tables_and_per_operator_split():
    tables = ops_tok_pairs(100, 999)
    assert [len(t) for t in tables] == [10_000, 5050, 3390, 9900]
    for name, t in zip(OPS_TOK_OPERATORS, tables):
        a, b = t[:, 0], t[:, 1]
        res = {"add": a + b, "sub": a - b, "mul": a * b, "floordiv": a // np.maximum(b, 1)}[name]
        assert ((res >= 0) & (res <= 999)).all() and ((a < 100) & (b < 100)).all()
    fmt = TaskFormat.from_task(TaskSpec(kind="ops_tok", max_operand=100, max_result=999,
                                        train_fraction=0.8))
    train, test = task_pairs(fmt, 0.8, 0)
    again, _ = task_pairs(fmt, 0.8, 0)
    assert (train == again).all()
    for op, t in enumerate(tables):
        tr, te = train[train[:, 2] == op, :2], test[test[:, 2] == op, :2]
        assert len(tr) == int(0.8 * len(t))
        assert {tuple(r) for r in tr} | {tuple(r) for r in te} == {tuple(r) for r in t}
        assert not {tuple(r) for r in tr} & {tuple(r) for r in te}
