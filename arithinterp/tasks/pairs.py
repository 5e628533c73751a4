"""Counterfactual prompt pairs for patching: :func:`make_pairs` and :class:`PromptPairs`.

Kinds (the corrupt prompt keeps the clean prompt's few-shot prefix):

==================  ======================================================================
``operand_a``       a new first operand; the answer changes
``operand_b``       a new second operand; the answer changes
``digit``           one digit of one operand (``operand="a"`` / ``"b"``) at ``column``
                    (LSD-indexed; ``None``: a random changeable column per pair); the
                    answer changes
``operator``        the same operands under another operation (``operator=``; default
                    add<->sub, mul->add, floordiv->mul, mod->floordiv); the answer changes
``same_answer``     other operands with the *same* answer (Stolfo et al.'s type 2)
``random``          an unrelated problem from the same spec; the answer changes
==================  ======================================================================

Corrupt operands stay where they keep the token layout: in padded formats
(the fixed formats by default) and in ``modular`` anywhere in the spec's
operand domain; otherwise they keep the clean operand's number of digits,
so digit-level tokenizers see prompts of the same length. "The answer
changes" compares the integer answers. ``same_answer`` never returns the
clean pair or its swap ``(b, a)``.

When a prompt has no valid counterfactual of the asked kind (``b = 0`` in a
multiplication leaves no other ``a`` with a different answer; a prime answer
has no other factorisation of the same width...), ``on_impossible="raise"``
(the default) raises :class:`~arithinterp.errors.TaskError`; with ``"drop"``
the pair is left out and its clean ``prompt_id`` listed in
:attr:`PromptPairs.dropped`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from arithinterp.errors import TaskError
from arithinterp.tasks.arithmetic import compute_answers
from arithinterp.tasks.promptset import PromptSet, build_promptset
from arithinterp.tasks.same_answer import ENUMERATE_LIMIT, propose
from arithinterp.tasks.sampling import OperandDomain
from arithinterp.tasks.spec import OPERATIONS, Operation, TaskSpec

PairKind = Literal["operand_a", "operand_b", "digit", "operator", "same_answer", "random"]
PAIR_KINDS: tuple[str, ...] = get_args(PairKind)
OnImpossible = Literal["raise", "drop"]

#: The operation a clean prompt is paired with by ``kind="operator"`` unless told otherwise.
DEFAULT_OPERATOR_SWAP: dict[str, str] = {
    "add": "sub",
    "sub": "add",
    "mul": "add",
    "floordiv": "mul",
    "mod": "floordiv",
}

_TRIES = 64


@dataclass(frozen=True, eq=False)
class PromptPairs:
    """Aligned clean and corrupt prompts: row ``i`` of each forms pair ``i``."""

    clean: PromptSet
    corrupt: PromptSet
    kind: PairKind
    column: int | None = None
    operand: Literal["a", "b"] | None = None
    changed_column: tuple[int, ...] | None = None
    dropped: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for side in ("clean", "corrupt"):
            if not isinstance(getattr(self, side), PromptSet):
                raise TaskError(
                    f"PromptPairs.{side} must be a PromptSet (arithinterp.tasks.generate), got "
                    f"{type(getattr(self, side)).__name__}; make pairs with make_pairs(prompts, kind)"
                )
        if len(self.clean) != len(self.corrupt):
            raise TaskError(f"{len(self.clean)} clean but {len(self.corrupt)} corrupt prompts; "
                            "pair i is row i of each, so both need the same length")

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def n_dropped(self) -> int:
        """How many clean prompts had no valid counterfactual and were left out."""
        return len(self.dropped)

    def __getitem__(self, key: Any) -> PromptPairs:
        clean, corrupt = self.clean[key], self.corrupt[key]
        changed = None
        if self.changed_column is not None:
            changed = tuple(np.asarray(self.changed_column)[_positions(len(self), key)].tolist())
        return PromptPairs(
            clean, corrupt, self.kind, self.column, self.operand, changed, self.dropped
        )

    @property
    def frame(self) -> pd.DataFrame:
        """One row per pair: every column of both frames, prefixed ``clean_`` / ``corrupt_``."""
        parts = [
            pd.DataFrame({"pair": np.arange(len(self)), "kind": self.kind}),
            self.clean.frame.add_prefix("clean_"),
            self.corrupt.frame.add_prefix("corrupt_"),
        ]
        if self.changed_column is not None:
            parts.insert(1, pd.DataFrame({"changed_column": list(self.changed_column)}))
        return pd.concat(parts, axis=1)

    def __repr__(self) -> str:
        head = (
            f"PromptPairs(n={len(self)}, kind={self.kind!r}, "
            f"operation={self.clean.spec.operation!r}, dropped={self.n_dropped})"
        )
        rows = [
            f"  {cp!r} -> {ca!r}   |   {xp!r} -> {xa!r}"
            for cp, ca, xp, xa in zip(
                self.clean.prompts[:5], self.clean.answers[:5],
                self.corrupt.prompts[:5], self.corrupt.answers[:5],
            )
        ]
        return "\n".join([head, *rows])


def _positions(n: int, key: Any) -> np.ndarray:
    return np.arange(n)[np.asarray(key) if not isinstance(key, slice) else key].reshape(-1)


def make_pairs(
    prompts: PromptSet,
    kind: PairKind,
    *,
    column: int | None = None,
    operand: Literal["a", "b"] = "a",
    operator: Operation | None = None,
    seed: int = 0,
    on_impossible: OnImpossible = "raise",
) -> PromptPairs:
    """Pair every prompt of ``prompts`` with a counterfactual of ``kind`` (see module docs)."""
    if kind not in PAIR_KINDS:
        raise TaskError(f"unknown pair kind {kind!r}; valid kinds: {', '.join(PAIR_KINDS)}")
    if on_impossible not in ("raise", "drop"):
        raise TaskError(f"on_impossible must be 'raise' or 'drop', got {on_impossible!r}")
    if operand not in ("a", "b"):
        raise TaskError(f"operand must be 'a' or 'b', got {operand!r}")
    if column is not None and kind != "digit":
        raise TaskError(f"column only applies to kind 'digit', not {kind!r}")
    if operator is not None and kind != "operator":
        raise TaskError(f"operator only applies to kind 'operator', not {kind!r}")
    if len(prompts) == 0:
        raise TaskError("make_pairs needs at least one prompt")
    spec = prompts.spec
    rng = np.random.default_rng(seed)
    frame = prompts.frame
    a = frame["operand_a"].to_numpy(dtype=np.int64)
    b = frame["operand_b"].to_numpy(dtype=np.int64)
    answers = frame["answer"].to_numpy(dtype=np.int64)
    ctx = _Context(spec, rng)

    corrupt_spec = spec
    changed: list[int] | None = None
    if kind == "operator":
        corrupt_spec = _operator_spec(spec, operator)
        found = _operator_rows(ctx, corrupt_spec, a, b, answers)
    elif kind == "digit":
        if column is not None and not 0 <= column < spec.operand_width:
            raise TaskError(
                f"column {column} is outside the operands' columns 0..{spec.operand_width - 1} "
                "(LSD-indexed: 0 is the units)"
            )
        found, changed = _digit_rows(ctx, a, b, answers, column, operand)
    else:
        finder: Callable[[int, int, int], tuple[int, int] | None] = {
            "operand_a": ctx.new_a,
            "operand_b": ctx.new_b,
            "same_answer": ctx.same_answer,
            "random": ctx.random_problem,
        }[kind]
        found = [finder(int(x), int(y), int(z)) for x, y, z in zip(a, b, answers)]

    keep = np.array([f is not None for f in found])
    if not keep.all():
        missing = np.flatnonzero(~keep)
        if on_impossible == "raise":
            examples = ", ".join(repr(prompts.prompts[i]) for i in missing[:3])
            raise TaskError(
                f"{len(missing)} of {len(prompts)} prompts have no valid {kind!r} counterfactual "
                f"(e.g. {examples}); pass on_impossible='drop' to leave them out "
                "(PromptPairs.dropped lists them)"
            )
        if not keep.any():
            raise TaskError(f"none of the {len(prompts)} prompts has a valid {kind!r} counterfactual")
    clean = prompts[keep]
    ca = np.array([f[0] for f in found if f is not None], dtype=np.int64)
    cb = np.array([f[1] for f in found if f is not None], dtype=np.int64)
    prefixes = [p[: len(p) - len(q)] for p, q in zip(clean.frame["prompt"], clean.frame["query"])]
    corrupt = build_promptset(
        corrupt_spec, ca, cb, prefixes=prefixes, prompt_ids=clean.frame["prompt_id"]
    )
    dropped = tuple(int(x) for x in frame["prompt_id"].to_numpy()[~keep])
    changed_kept = None if changed is None else tuple(c for c, k in zip(changed, keep) if k)
    return PromptPairs(
        clean, corrupt, kind,
        column=column if kind == "digit" else None,
        operand=operand if kind == "digit" else None,
        changed_column=changed_kept,
        dropped=dropped,
    )


class _Context:
    """Where corrupt operands may live for one spec, and the searches over them."""

    def __init__(self, spec: TaskSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.rng = rng
        self.dom_a = OperandDomain.of(spec, "a")
        self.dom_b = OperandDomain.of(spec, "b")
        self.anywhere = spec.pad or spec.format == "modular"

    def interval(self, value: int, which: str) -> tuple[int, int]:
        dom = self.dom_a if which == "a" else self.dom_b
        if self.anywhere:
            return dom.lo, dom.hi
        return dom.width_bounds(len(str(value)))

    def valid(self, ca: np.ndarray, cb: np.ndarray, spec: TaskSpec | None = None) -> np.ndarray:
        spec = spec or self.spec
        ok = np.ones(len(ca), dtype=bool)
        if spec.operation in ("floordiv", "mod"):
            ok &= cb != 0
        if spec.operation == "sub" and not spec.allow_negative:
            ok &= ca >= cb
        return ok

    def answers(self, ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
        return compute_answers(self.spec.operation, ca, cb, self.spec.p)

    def pick(self, ca: np.ndarray, cb: np.ndarray, good: np.ndarray) -> tuple[int, int] | None:
        idx = np.flatnonzero(good)
        if not len(idx):
            return None
        k = idx[int(self.rng.integers(len(idx)))]
        return int(ca[k]), int(cb[k])

    def _new_operand(self, a: int, b: int, y: int, which: str) -> tuple[int, int] | None:
        lo, hi = self.interval(a if which == "a" else b, which)
        for exhaustive in (False, True):
            if exhaustive and hi - lo + 1 > ENUMERATE_LIMIT:
                return None
            if exhaustive:
                cand = np.arange(lo, hi + 1, dtype=np.int64)
            else:
                cand = self.rng.integers(lo, hi, size=_TRIES, endpoint=True, dtype=np.int64)
            ca, cb = (cand, np.full_like(cand, b)) if which == "a" else (np.full_like(cand, a), cand)
            moved = ca != a if which == "a" else cb != b
            good = moved & self.valid(ca, cb) & (self.answers(ca, cb) != y)
            found = self.pick(ca, cb, good)
            if found is not None:
                return found
        return None

    def new_a(self, a: int, b: int, y: int) -> tuple[int, int] | None:
        if self.spec.operation == "mul" and b == 0:
            return None  # every a gives 0
        return self._new_operand(a, b, y, "a")

    def new_b(self, a: int, b: int, y: int) -> tuple[int, int] | None:
        if self.spec.operation == "mul" and a == 0:
            return None
        return self._new_operand(a, b, y, "b")

    def random_problem(self, a: int, b: int, y: int) -> tuple[int, int] | None:
        (alo, ahi), (blo, bhi) = self.interval(a, "a"), self.interval(b, "b")
        for _ in range(4):
            ca = self.rng.integers(alo, ahi, size=_TRIES, endpoint=True, dtype=np.int64)
            cb = self.rng.integers(blo, bhi, size=_TRIES, endpoint=True, dtype=np.int64)
            good = self.valid(ca, cb) & (self.answers(ca, cb) != y)
            found = self.pick(ca, cb, good)
            if found is not None:
                return found
        return None

    def same_answer(self, a: int, b: int, y: int) -> tuple[int, int] | None:
        ia, ib = self.interval(a, "a"), self.interval(b, "b")
        op = self.spec.operation
        for exhaustive in (False, True):
            if exhaustive and (op == "mul" or _size(ib if op == "mod" else ia) > ENUMERATE_LIMIT):
                return None
            ca, cb = propose(op, self.rng, a, b, y, ia, ib, p=self.spec.p, exhaustive=exhaustive)
            good = (
                (ca >= ia[0]) & (ca <= ia[1]) & (cb >= ib[0]) & (cb <= ib[1])
                & (ca != a) & ~((ca == b) & (cb == a))
            )
            good &= self.valid(ca, cb)
            good &= self.answers(ca, np.where(good, cb, 1)) == y
            found = self.pick(ca, cb, good)
            if found is not None:
                return found
        return None


def _size(interval: tuple[int, int]) -> int:
    return interval[1] - interval[0] + 1


def _digit_rows(
    ctx: _Context,
    a: np.ndarray,
    b: np.ndarray,
    answers: np.ndarray,
    column: int | None,
    operand: str,
) -> tuple[list[tuple[int, int] | None], list[int]]:
    found: list[tuple[int, int] | None] = []
    changed: list[int] = []
    width = ctx.spec.operand_width
    for x, y, z in zip(a.tolist(), b.tolist(), answers.tolist()):
        value = x if operand == "a" else y
        lo, hi = ctx.interval(value, operand)
        columns = [column] if column is not None else list(range(width))
        options: list[tuple[int, int, int]] = []
        for c in columns:
            digit = (value // 10**c) % 10
            new = np.array([value + (d - digit) * 10**c for d in range(10) if d != digit])
            ca = new if operand == "a" else np.full_like(new, x)
            cb = np.full_like(new, y) if operand == "a" else new
            good = (new >= lo) & (new <= hi) & ctx.valid(ca, cb) & (ctx.answers(ca, cb) != z)
            options.extend((int(ca[k]), int(cb[k]), c) for k in np.flatnonzero(good))
        if not options:
            found.append(None)
            changed.append(-1)
            continue
        if column is None:
            # a uniform column first, then a uniform digit: short columns are not favoured
            cols = sorted({o[2] for o in options})
            pick_col = cols[int(ctx.rng.integers(len(cols)))]
            options = [o for o in options if o[2] == pick_col]
        ca_, cb_, c = options[int(ctx.rng.integers(len(options)))]
        found.append((ca_, cb_))
        changed.append(c)
    return found, changed


def _operator_spec(spec: TaskSpec, operator: str | None) -> TaskSpec:
    if spec.operation == "modadd":
        raise TaskError("kind 'operator' is not defined for modadd (no other modular operation)")
    target = operator if operator is not None else DEFAULT_OPERATOR_SWAP[spec.operation]
    if target not in OPERATIONS or target == "modadd":
        valid = [o for o in OPERATIONS if o not in ("modadd", spec.operation)]
        raise TaskError(f"operator must be one of {valid}, got {target!r}")
    if target == spec.operation:
        raise TaskError(f"operator {target!r} is the clean prompts' own operation")
    if spec.format == "template" and spec.template is not None:
        raise TaskError(
            "kind 'operator' cannot rewrite a custom template (it does not know the "
            "operator's wording); use template=None for the built-in per-operation templates"
        )
    data = spec.model_dump()
    data.update(operation=target, sampling="uniform")
    try:
        return TaskSpec(**data)
    except TaskError as exc:
        raise TaskError(
            f"cannot pair {spec.operation!r} prompts with operator {target!r}: {exc}; "
            "choose another with operator=..."
        ) from None


def _operator_rows(ctx, corrupt_spec, a, b, answers):
    y2 = compute_answers(corrupt_spec.operation, a, b, corrupt_spec.p)
    good = ctx.valid(a, b, corrupt_spec) & (y2 != answers)
    return [(int(x), int(y)) if g else None for x, y, g in zip(a, b, good)]
