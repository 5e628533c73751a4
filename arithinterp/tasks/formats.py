"""Writing operands and answers as text, one format at a time (see :mod:`.spec`)."""

from __future__ import annotations

from arithinterp.tasks.spec import FIXED_FORMATS, REVERSED_FORMATS, TaskSpec


def operand_text(value: int, spec: TaskSpec) -> str:
    """An operand as written in the prompt: zero-padded when ``spec.pad``."""
    return str(value).zfill(spec.operand_width) if spec.pad else str(value)


def query_text(a: int, b: int, spec: TaskSpec) -> str:
    """The prompt for one problem, without any few-shot prefix."""
    sa, sb = operand_text(a, spec), operand_text(b, spec)
    if spec.format == "template":
        return spec.resolved_template.format(a=sa, b=sb)
    if spec.format == "modular":
        return f"{sa} {sb} ="
    return f"{sa}{spec.symbol}{sb}="


def answer_text(value: int, spec: TaskSpec) -> str:
    """The exact text that follows the prompt for the answer ``value``."""
    digits = str(abs(value))
    if spec.format in FIXED_FORMATS:
        digits = digits.zfill(spec.answer_width)
    if spec.format in REVERSED_FORMATS:
        digits = digits[::-1]
    if spec.format in FIXED_FORMATS and spec.can_be_negative:
        sign = "-" if value < 0 else "+"
    else:
        sign = "-" if value < 0 else ""
    text = sign + digits
    return " " + text if spec.format == "template" else text


def few_shot_prefix(examples: list[tuple[int, int, int]], spec: TaskSpec) -> str:
    """Solved examples ``(a, b, answer)``, each followed by the separator."""
    sep = spec.few_shot_separator
    return "".join(query_text(a, b, spec) + answer_text(y, spec) + sep for a, b, y in examples)
