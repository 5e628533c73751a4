"""What family of arithmetic prompts to generate: :class:`TaskSpec`.

A spec is a frozen pydantic model, so a pipeline YAML validates it before
anything runs. It fixes the operation, the operand domain, the text format,
how operands are sampled and the seed; :func:`arithinterp.tasks.generate`
turns it into a :class:`~arithinterp.tasks.PromptSet`.

Operand domain
--------------
* ``digits=3``: both operands have exactly 3 digits (100..999). A width of 1
  means 0..9, so 0 is an operand only when the widths include 1.
* ``digits=(1, 3)``: each operand first draws its width uniformly from 1..3,
  then its value uniformly among numbers of that width (so short operands are
  not swamped by long ones).
* ``operand_range=(lo, hi)``: both operands uniform in ``lo..hi``; wins over
  ``digits``.
* ``modadd`` ignores ``digits`` and uses ``0..p-1`` unless ``operand_range``
  is given (Nanda et al.'s full table).
* The divisor of ``floordiv`` / ``mod`` never takes the value 0: it is left
  out of the divisor's domain.

Sampling (``sampling=``)
------------------------
* ``uniform`` (default): as above. Uniform 5-digit addition almost never
  makes a long carry cascade (S3 and above: about 1 %).
* ``balance_classes``: equal shares of the cascade classes the widths allow,
  built digit by digit: addition's carry classes ``S0``..``S5``, subtraction's
  borrow classes ``B0``..``B5`` (the frame's ``complexity`` column; see
  :mod:`arithinterp.tasks.sampling`). Needs ``digits``, not ``operand_range``.
* ``balance_carries`` (addition): equal shares of each number of carries.

Formats (``a=123, b=456`` for addition)
---------------------------------------
==================  =====================  ==========================================
format              prompt                 answer text
==================  =====================  ==========================================
``plain``           ``123+456=``           ``579``
``reversed``        ``123+456=``           ``975`` (least significant digit first)
``fixed``           ``123+456=``           ``0579`` zero-padded to the widest answer
``fixed_reversed``  ``123+456=``           ``9750`` fixed width, LSD first
``template``        ``123 plus 456 is``    `` 579`` (note the leading space)
``modular``         ``37 85 =``            ``9`` (``modadd`` only, Nanda et al.)
==================  =====================  ==========================================

Operands are zero-padded to the widest operand when ``pad_operands`` is true
(the default for the two fixed formats), so every prompt of a fixed-format
spec has the same length. Negative subtraction results are written with a
leading ``-`` (``reversed``: ``-`` then the reversed digits). In the fixed
formats of a subtraction spec that can go negative, every answer carries a
sign, ``+`` or ``-``, before its digits so that all answers keep one width.

Few-shot prompts prefix ``few_shot`` solved examples in the same format,
each followed by ``few_shot_separator`` (default ``"\\n"``: pretrained LMs
read newline-separated worked examples naturally, and a newline never merges
with a digit or an operator in BPE vocabularies).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from arithinterp.errors import TaskError

Operation = Literal["add", "sub", "mul", "floordiv", "mod", "modadd"]
Format = Literal["plain", "reversed", "fixed", "fixed_reversed", "template", "modular"]
Sampling = Literal["uniform", "balance_carries", "balance_classes"]

OPERATIONS: tuple[str, ...] = get_args(Operation)
FORMATS: tuple[str, ...] = get_args(Format)
SAMPLINGS: tuple[str, ...] = get_args(Sampling)

SYMBOLS: dict[str, str] = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "floordiv": "/",
    "mod": "%",
    "modadd": "+",
}

#: Built-in natural-language templates, one word apart so that operator
#: counterfactuals keep every other token in place.
DEFAULT_TEMPLATES: dict[str, str] = {
    "add": "{a} plus {b} is",
    "sub": "{a} minus {b} is",
    "mul": "{a} times {b} is",
    "floordiv": "{a} divided by {b} is",
    "mod": "{a} modulo {b} is",
}

FIXED_FORMATS = frozenset({"fixed", "fixed_reversed"})
REVERSED_FORMATS = frozenset({"reversed", "fixed_reversed"})

MAX_DIGITS = 18  # a + b of two 18-digit numbers still fits in int64
MAX_MUL_DIGITS = 9  # a * b of two 9-digit numbers still fits in int64
MAX_VALUE = 10**MAX_DIGITS - 1
MAX_PROMPTS = 1_000_000  # prompts of one task; far more than any analysis needs, and fits in memory
MAX_FEW_SHOT = 64  # solved examples before each prompt; more will not fit any model's context
MAX_SEED = 2**32 - 1  # what numpy's legacy seeding accepts


class TaskSpec(BaseModel):
    """A seeded family of arithmetic prompts; see the module docstring for the formats.

    Build one directly (``TaskSpec(operation="mul", digits=3, n=500)``) or from
    a mapping with :meth:`parse`. Either way an impossible spec raises
    :class:`~arithinterp.errors.TaskError` naming the field and what is valid.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    operation: Operation = "add"
    digits: int | tuple[int, int] = 3
    operand_range: tuple[int, int] | None = None
    p: int = 113
    n: int = 100
    seed: int = 0
    format: Format = "plain"
    pad_operands: bool | None = None
    template: str | None = None
    few_shot: int = 0
    few_shot_separator: str = "\n"
    sampling: Sampling = "uniform"
    allow_negative: bool = True

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise TaskError(_describe(exc)) from None

    @classmethod
    def parse(cls, data: Mapping[str, Any] | TaskSpec) -> TaskSpec:
        """A spec from a mapping (e.g. a YAML block); errors become :class:`TaskError`."""
        if isinstance(data, TaskSpec):
            return data
        if not isinstance(data, Mapping):
            raise TaskError(f"a task spec must be a TaskSpec or a mapping of fields, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise TaskError(_describe(exc)) from None

    # ---- field checks ---------------------------------------------------------------

    @field_validator("digits")
    @classmethod
    def _check_digits(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        lo, hi = (v, v) if isinstance(v, int) else v
        if not 1 <= lo <= hi <= MAX_DIGITS:
            raise ValueError(
                f"digits must be a width 1..{MAX_DIGITS} or a (lo, hi) pair with "
                f"1 <= lo <= hi <= {MAX_DIGITS}, got {v!r}"
            )
        return v

    @field_validator("operand_range")
    @classmethod
    def _check_range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 0 <= v[0] <= v[1] <= MAX_VALUE:
            raise ValueError(
                f"operand_range must be (lo, hi) with 0 <= lo <= hi <= {MAX_VALUE}, got {v!r}"
            )
        return v

    @field_validator("n")
    @classmethod
    def _check_n(cls, v: int) -> int:
        if not 1 <= v <= MAX_PROMPTS:
            raise ValueError(f"n (number of prompts) must be at least 1 and at most {MAX_PROMPTS:_}, got {v:_}")
        return v

    @field_validator("seed")
    @classmethod
    def _check_seed(cls, v: int) -> int:
        if not 0 <= v <= MAX_SEED:
            raise ValueError(f"seed must be a non-negative integer up to 2**32-1, got {v}")
        return v

    @field_validator("p")
    @classmethod
    def _check_p(cls, v: int) -> int:
        if not 2 <= v <= 10**9:
            raise ValueError(f"p (the modulus of modadd) must be in 2..10**9, got {v}")
        return v

    @field_validator("few_shot")
    @classmethod
    def _check_few_shot(cls, v: int) -> int:
        if not 0 <= v <= MAX_FEW_SHOT:
            raise ValueError(f"few_shot must be 0..{MAX_FEW_SHOT} solved examples, got {v}")
        return v

    @model_validator(mode="after")
    def _check_combination(self) -> TaskSpec:
        op, fmt = self.operation, self.format
        if op == "modadd" and fmt not in ("modular", "plain"):
            raise ValueError(f"modadd needs format 'modular' or 'plain', got {fmt!r}")
        if fmt == "modular" and op != "modadd":
            raise ValueError(
                f"format 'modular' ('{{a}} {{b}} =') is for operation 'modadd' only, got {op!r}; "
                "use 'plain' for the other operations"
            )
        if self.template is not None and fmt != "template":
            raise ValueError(f"template is only used with format 'template', not {fmt!r}")
        if fmt == "template":
            _check_template(self.resolved_template)
        if self.sampling != "uniform":
            ops = ("add", "sub") if self.sampling == "balance_classes" else ("add",)
            if op not in ops:
                raise ValueError(
                    f"sampling {self.sampling!r} balances carries (and, for 'sub', borrows) and is defined for "
                    f"{' and '.join(repr(o) for o in ops)} only, got operation {op!r}; use sampling 'uniform'"
                )
            if self.operand_range is not None:
                raise ValueError(
                    f"sampling {self.sampling!r} constructs operands digit by digit and needs "
                    "'digits', not 'operand_range'"
                )
        if op == "mul" and self.max_operand > 10**MAX_MUL_DIGITS - 1:
            raise ValueError(
                f"mul supports operands up to {MAX_MUL_DIGITS} digits (the product must fit "
                f"in int64), got a largest operand of {self.max_operand}"
            )
        if op in ("floordiv", "mod") and self.max_operand == 0:
            raise ValueError(f"{op} needs a nonzero divisor, but operand_range is {self.operand_range}")
        return self

    # ---- derived quantities ---------------------------------------------------------

    @property
    def symbol(self) -> str:
        """The operator as written in the prompt (``+ - * / % +``)."""
        return SYMBOLS[self.operation]

    @property
    def digit_range(self) -> tuple[int, int]:
        """``digits`` as an inclusive ``(lo, hi)`` pair of widths."""
        d = self.digits
        return (d, d) if isinstance(d, int) else (int(d[0]), int(d[1]))

    @property
    def value_range(self) -> tuple[int, int] | None:
        """The explicit operand range, or ``(0, p-1)`` for modadd; None when digits decide."""
        if self.operand_range is not None:
            return (int(self.operand_range[0]), int(self.operand_range[1]))
        if self.operation == "modadd":
            return (0, self.p - 1)
        return None

    @property
    def min_operand(self) -> int:
        vr = self.value_range
        if vr is not None:
            return vr[0]
        lo = self.digit_range[0]
        return 0 if lo == 1 else 10 ** (lo - 1)

    @property
    def max_operand(self) -> int:
        vr = self.value_range
        return vr[1] if vr is not None else 10 ** self.digit_range[1] - 1

    @property
    def operand_width(self) -> int:
        """Digits of the widest operand: the number of ``a_digit_{i}`` columns."""
        return len(str(self.max_operand))

    @property
    def can_be_negative(self) -> bool:
        return (
            self.operation == "sub"
            and self.allow_negative
            and self.min_operand < self.max_operand
        )

    @property
    def max_answer(self) -> int:
        """The largest answer magnitude this spec can produce."""
        lo, hi = self.min_operand, self.max_operand
        blo = max(lo, 1)
        return {
            "add": 2 * hi,
            "sub": hi - lo,
            "mul": hi * hi,
            "floordiv": hi // blo,
            "mod": max(hi - 1, 0),
            "modadd": min(self.p - 1, 2 * hi),
        }[self.operation]

    @property
    def answer_width(self) -> int:
        """Digits of the largest answer (the width of the fixed formats, without a sign)."""
        return len(str(self.max_answer))

    @property
    def pad(self) -> bool:
        """Whether operands are zero-padded to :attr:`operand_width`."""
        return self.format in FIXED_FORMATS if self.pad_operands is None else self.pad_operands

    @property
    def resolved_template(self) -> str:
        """The template in use: ``template`` or the built-in one for the operation."""
        if self.template is not None:
            return self.template
        return DEFAULT_TEMPLATES.get(self.operation, "{a} plus {b} is")


def _check_template(template: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"template {template!r} is not a valid format string: {exc}") from None
    unknown = sorted(set(fields) - {"a", "b"})
    if unknown:
        raise ValueError(
            f"template {template!r} has placeholders {unknown}; only {{a}} and {{b}} are allowed"
        )
    if fields.count("a") != 1 or fields.count("b") != 1:
        raise ValueError(f"template {template!r} must contain {{a}} and {{b}} exactly once each")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            msg = f"{msg}, got {err['input']!r}"
        elif err["type"] == "extra_forbidden":
            msg = f"unknown field (valid fields: {', '.join(TaskSpec.model_fields)})"
        parts.append(f"{loc}: {msg}")
    return "invalid TaskSpec: " + "; ".join(parts)
