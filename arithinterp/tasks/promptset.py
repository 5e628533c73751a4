"""Generated prompts with their ground truth: :func:`generate` and :class:`PromptSet`.

``PromptSet.frame`` is tidy, one row per prompt. Its columns:

* ``prompt_id`` (position in the generated set; kept when you take a subset),
  ``prompt`` (full text, few-shot prefix included), ``query`` (the prompt
  without the few-shot prefix), ``answer_text`` (exact text following the
  prompt), ``operand_a``, ``operand_b``, ``operator`` (symbol), ``operation``
  (name), ``answer`` (int, signed), ``n_answer_digits``;
* ``a_digit_{i}``, ``b_digit_{i}`` for ``i < spec.operand_width`` and
  ``answer_digit_{i}`` for ``i < spec.answer_width`` (digits of ``|answer|``),
  always indexed from the least significant digit (``i = 0`` is the units),
  whatever order the format writes digits in;
* per operation (definitions in :mod:`arithinterp.tasks.arithmetic`):
  add: ``SA_{i} SC_{i} SS_{i} ST_{i} carry_in_{i} n_carries complexity``;
  sub: ``borrow_{i} n_borrows negative ab_borrow_{i} MD_{i} MB_{i} MZ_{i} GT_{i} MT_{i} complexity``;
  mul: ``pp_{i}_{j} s_{k} c_hat_{k}``; floordiv / mod: ``quotient remainder``;
  modadd: ``raw_sum`` (``a + b`` before reduction).
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from arithinterp.errors import TaskError
from arithinterp.tasks.arithmetic import annotate, compute_answers
from arithinterp.tasks.formats import answer_text, few_shot_prefix, query_text
from arithinterp.tasks.sampling import OperandDomain, sample_operands
from arithinterp.tasks.spec import TaskSpec

_SUMMARY_COLUMNS = ["prompt", "answer_text", "operand_a", "operand_b", "answer"]


@dataclass(frozen=True, eq=False)
class PromptSet:
    """Prompts, the exact answer texts that follow them, and a tidy frame of ground truth.

    Index it like an array (``ps[:10]``, ``ps[[3, 5]]``,
    ``ps[ps.frame.complexity == "S3"]``) to get another :class:`PromptSet`;
    an integer gives a one-prompt set. Treat ``frame`` as read-only
    (:meth:`to_frame` returns a copy to modify).
    """

    spec: TaskSpec
    frame: pd.DataFrame
    prompts: tuple[str, ...]
    answers: tuple[str, ...]

    def __post_init__(self) -> None:
        if not len(self.prompts) == len(self.answers) == len(self.frame):
            raise ValueError(
                f"PromptSet parts disagree: {len(self.prompts)} prompts, "
                f"{len(self.answers)} answers, {len(self.frame)} frame rows"
            )

    @classmethod
    def from_frame(cls, spec: TaskSpec, frame: pd.DataFrame) -> PromptSet:
        frame = frame.reset_index(drop=True)
        return cls(spec, frame, tuple(frame["prompt"]), tuple(frame["answer_text"]))

    @classmethod
    def from_operands(
        cls, spec: TaskSpec | Mapping[str, Any], a: Sequence[int], b: Sequence[int]
    ) -> PromptSet:
        """Prompts for the given operands, written and annotated as ``spec`` says.

        ``spec.n``, ``seed``, ``sampling`` and ``few_shot`` are not used.
        """
        spec = TaskSpec.parse(spec)
        a_arr, b_arr = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
            raise TaskError(
                f"a and b must be equal-length 1-d sequences, got shapes {a_arr.shape}, {b_arr.shape}"
            )
        lo, hi = spec.min_operand, spec.max_operand
        if ((a_arr < lo) | (a_arr > hi) | (b_arr < lo) | (b_arr > hi)).any():
            raise TaskError(
                f"operands must lie in the spec's operand domain {lo}..{hi} "
                "(widen digits or operand_range to include them)"
            )
        return build_promptset(spec, a_arr, b_arr)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, key: Any) -> PromptSet:
        if isinstance(key, (int, np.integer)):
            if not -len(self) <= key < len(self):
                raise IndexError(f"prompt {key} out of range for a PromptSet of {len(self)}")
            key = [int(key)]
        if isinstance(key, pd.Series):
            key = key.to_numpy()
        if isinstance(key, slice):
            rows = self.frame.iloc[key]
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise IndexError(f"boolean mask of shape {idx.shape} for {len(self)} prompts")
                idx = np.flatnonzero(idx)
            rows = self.frame.iloc[idx.astype(np.int64)]
        return PromptSet.from_frame(self.spec, rows)

    def __iter__(self):
        raise TypeError(
            "iterate over ps.prompts / ps.answers or ps.frame.itertuples(); "
            "a PromptSet itself only supports len() and indexing"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PromptSet):
            return NotImplemented
        return self.spec == other.spec and self.frame.equals(other.frame)

    def __hash__(self) -> int:
        return hash(self.hash)

    @property
    def hash(self) -> str:
        """Short sha256 over the prompts and answer texts; stable across runs and machines."""
        h = hashlib.sha256()
        for prompt, answer in zip(self.prompts, self.answers):
            h.update(prompt.encode())
            h.update(b"\x1f")
            h.update(answer.encode())
            h.update(b"\x1e")
        return h.hexdigest()[:16]

    @property
    def operation(self) -> str:
        return self.spec.operation

    def to_frame(self) -> pd.DataFrame:
        """A copy of the frame, safe to modify."""
        return self.frame.copy()

    def _head(self, k: int = 5) -> pd.DataFrame:
        return self.frame[_SUMMARY_COLUMNS].head(k)

    def __repr__(self) -> str:
        s = self.spec
        head = (
            f"PromptSet(n={len(self)}, operation={s.operation!r}, format={s.format!r}, "
            f"sampling={s.sampling!r}, hash={self.hash!r})"
        )
        rows = [f"  {p!r} -> {a!r}" for p, a in zip(self.prompts[:5], self.answers[:5])]
        if len(self) > 5:
            rows.append(f"  ... {len(self) - 5} more")
        return "\n".join([head, *rows])

    def _repr_html_(self) -> str:
        s = self.spec
        title = html.escape(
            f"PromptSet: n={len(self)}, operation={s.operation}, format={s.format}, "
            f"sampling={s.sampling}, hash={self.hash}"
        )
        return f"<div><b>{title}</b>{self._head().to_html(index=False)}</div>"


def build_promptset(
    spec: TaskSpec,
    a: np.ndarray,
    b: np.ndarray,
    *,
    prefixes: Sequence[str] | None = None,
    prompt_ids: Sequence[int] | None = None,
) -> PromptSet:
    """A :class:`PromptSet` for given operands (used by :func:`generate` and the pairs)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if spec.operation in ("floordiv", "mod") and (b == 0).any():
        raise TaskError(f"{spec.operation} needs nonzero divisors; operand_b contains 0")
    n = len(a)
    prefixes = [""] * n if prefixes is None else list(prefixes)
    answers = compute_answers(spec.operation, a, b, spec.p)
    queries = [query_text(int(x), int(y), spec) for x, y in zip(a, b)]
    texts = [answer_text(int(y), spec) for y in answers]
    columns: dict[str, Any] = {
        "prompt_id": np.arange(n) if prompt_ids is None else np.asarray(prompt_ids),
        "prompt": [p + q for p, q in zip(prefixes, queries)],
        "query": queries,
        "answer_text": texts,
        "operand_a": a,
        "operand_b": b,
        "operator": spec.symbol,
        "operation": spec.operation,
        "answer": answers,
    }
    columns.update(
        annotate(
            spec.operation, a, b, answers,
            operand_width=spec.operand_width, answer_width=spec.answer_width,
        )
    )
    return PromptSet.from_frame(spec, pd.DataFrame(columns))


def model_task(model: Any, **fields: Any) -> TaskSpec:
    """The task ``model`` was trained on (``model.default_task``), with ``fields`` replaced.

    ``operation=`` picks among the model's tasks when it has several (``addsub``: ``"sub"``;
    ``ops_tok``: ``"mul"``...), instead of changing the operation of the first one. Raises
    :class:`TaskError` for a model without a default task (anything but a zoo model).
    """
    tasks = tuple(getattr(model, "default_tasks", ()) or ())
    if not tasks:
        name = getattr(model, "name", None) or type(model).__name__
        raise TaskError(
            f"model {name!r} has no default task (only zoo models, whose card.json records their "
            "training task, carry one); pass a task: generate(TaskSpec(operation=..., digits=..., "
            "format=...))"
        )
    base = tasks[0]
    if "operation" in fields:
        base = next((t for t in tasks if t.operation == fields["operation"]), base)
    return TaskSpec.parse({**base.model_dump(), **fields}) if fields else base


def generate(spec: TaskSpec | Mapping[str, Any] | None = None, *, model: Any = None, **fields: Any) -> PromptSet:
    """Generate ``spec.n`` prompts with their answers and ground-truth annotations.

    ``generate(spec)`` generates a :class:`TaskSpec` (or a mapping of its fields).
    ``generate(model=model)`` (or ``generate(model)``) generates the task a zoo model was
    trained on, in its format (``model.default_task``; :func:`model_task`), and raises
    ``TaskError`` for a model without one.
    Keyword ``fields`` replace fields of either: ``generate(model=model, n=500, seed=1)``.

    The same spec (seed included) always gives the same :class:`PromptSet`
    and the same :attr:`PromptSet.hash`. Few-shot examples are drawn
    uniformly from the spec's operand domain by the same seeded generator,
    after the prompts themselves.
    """
    if hasattr(spec, "default_tasks"):  # generate(model): a Model in the first place
        spec, model = None, spec
    if spec is None and model is None:
        raise TaskError("generate needs a task: generate(TaskSpec(...)), or generate(model=model) for a "
                        "zoo model's own task")
    if spec is None:
        spec = model_task(model, **fields)
    elif fields:
        spec = TaskSpec.parse({**TaskSpec.parse(spec).model_dump(), **fields})
    spec = TaskSpec.parse(spec)
    rng = np.random.default_rng(spec.seed)
    a, b = sample_operands(spec, rng, spec.n)
    prefixes = None
    if spec.few_shot:
        k = spec.few_shot
        ea = OperandDomain.of(spec, "a").sample(rng, spec.n * k)
        eb = OperandDomain.of(spec, "b").sample(rng, spec.n * k)
        if spec.operation == "sub" and not spec.allow_negative:
            ea, eb = np.maximum(ea, eb), np.minimum(ea, eb)
        ey = compute_answers(spec.operation, ea, eb, spec.p)
        examples = list(zip(ea.tolist(), eb.tolist(), ey.tolist()))
        prefixes = [few_shot_prefix(examples[i * k : (i + 1) * k], spec) for i in range(spec.n)]
    return build_promptset(spec, a, b, prefixes=prefixes)
