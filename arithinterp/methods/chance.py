"""Is a model at chance level on its prompts, and why? (:class:`~arithinterp.errors.ChanceAccuracyWarning`)

A score is *at chance level* when the exact-match accuracy is under :data:`CHANCE_ACCURACY`
and either the prompts differ from the task the model was trained on
(``model.default_task``) or most answer tokens are wrong too (mean per-token accuracy under
:data:`CHANCE_TOKEN_ACCURACY`). The second condition keeps a model that is merely weak on some
digits (``zoo:mul-3d``: 1.2% exact, but its first and last digits right) from being called
chance-level.

The likely cause is named, concretely, when it can be known: a zoo model carries its own task,
so every field that differs is listed (``format='plain' here, the model expects
format='modular'``), as are sequences longer than the ones it was trained on. For a model
without one the message lists what usually goes wrong.
"""

from __future__ import annotations

from typing import Any

from arithinterp.tasks import PromptSet, TaskSpec, generate, tokenize
from arithinterp.tasks.spec import FIXED_FORMATS

__all__ = ["CHANCE_ACCURACY", "CHANCE_TOKEN_ACCURACY", "chance_message", "short_repr", "task_differences"]

#: Exact-match accuracy under which a score counts as chance level.
CHANCE_ACCURACY = 0.05
#: Mean per-answer-token accuracy under which a low exact match is chance level even when the
#: prompts are in the model's own format.
CHANCE_TOKEN_ACCURACY = 0.5


def _expected(spec: TaskSpec, tasks: tuple[TaskSpec, ...]) -> TaskSpec:
    return next((t for t in tasks if t.operation == spec.operation), tasks[0])


def _domain(spec: TaskSpec, expected: TaskSpec) -> list[str]:
    if spec.operation == "modadd" and spec.p != expected.p:
        return [f"p={spec.p} here, the model expects p={expected.p}"]
    if expected.value_range is not None and expected.operation != "modadd":
        lo, hi = expected.value_range
        if spec.min_operand < lo or spec.max_operand > hi:
            return [f"operands {spec.min_operand}..{spec.max_operand} here, the model expects "
                    f"operand_range={expected.operand_range!r}"]
        return []
    wider = spec.max_operand > expected.max_operand
    other_width = spec.format in FIXED_FORMATS and spec.operand_width != expected.operand_width
    if expected.value_range is None and (wider or other_width):
        return [f"digits={spec.digits!r} here, the model expects digits={expected.digits!r}"]
    return []


def task_differences(spec: TaskSpec, tasks: tuple[TaskSpec, ...]) -> list[str]:
    """How ``spec`` differs from the model's own ``tasks`` in what changes the tokens the model
    reads (``n`` and ``seed`` do not), one phrase per field; empty when it does not."""
    if not tasks:
        return []
    operations = [t.operation for t in tasks]
    if spec.operation not in operations:
        known = " or ".join(repr(op) for op in operations)
        return [f"operation={spec.operation!r} here, the model was trained on operation={known}"]
    expected = _expected(spec, tasks)
    out = [f"{name}={getattr(spec, name)!r} here, the model expects {name}={getattr(expected, name)!r}"
           for name in ("format", "few_shot") if getattr(spec, name) != getattr(expected, name)]
    if out:
        return out
    if spec.pad != expected.pad:
        out.append(f"pad_operands={spec.pad!r} here, the model expects pad_operands={expected.pad!r}")
    if spec.format == "template" and spec.resolved_template != expected.resolved_template:
        out.append(f"template={spec.resolved_template!r} here, the model expects {expected.resolved_template!r}")
    if spec.operation == "sub" and spec.can_be_negative != expected.can_be_negative:
        out.append(f"allow_negative={spec.allow_negative!r} here, the model expects "
                   f"allow_negative={expected.allow_negative!r}")
    return out + _domain(spec, expected)


def short_repr(spec: TaskSpec) -> str:
    """``TaskSpec(...)`` with only the fields that differ from the defaults, ``n`` and ``seed`` left out."""
    fields = spec.model_dump(exclude_defaults=True, exclude={"n", "seed"})
    return f"TaskSpec({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


def _trained_length(model: Any, expected: TaskSpec) -> int | None:
    """Tokens of one prompt plus answer of the model's own task (``None`` if not measurable)."""
    try:
        return int(tokenize(generate(expected.model_copy(update={"n": 1})), model.tokenizer,
                            answer="multi").tokens.shape[1])
    except Exception:  # noqa: BLE001 - a diagnosis must never turn a finished evaluation into an error
        return None


def chance_message(model: Any, prompts: PromptSet, *, accuracy: float, token_accuracy: float,
                   seq_len: int) -> str | None:
    """The warning for a score at chance level (``None`` when it is not), naming the likely cause.

    ``seq_len``: tokens of one prompt plus its answer, as the model read them.
    """
    spec = prompts.spec
    tasks = tuple(getattr(model, "default_tasks", ()) or ())
    diffs = task_differences(spec, tasks)
    if accuracy >= CHANCE_ACCURACY or (not diffs and token_accuracy >= CHANCE_TOKEN_ACCURACY):
        return None
    head = (f"{model.name} answers {accuracy:.1%} of {len(prompts)} prompts exactly "
            f"({token_accuracy:.1%} of answer tokens): chance level (under {CHANCE_ACCURACY:.0%}).")
    if not tasks:
        return (f"{head} The model has no default task (no zoo card), so the cause cannot be read off; "
                f"check that it was trained on this prompt format (format={spec.format!r}, e.g. padded "
                f"or reversed answers), on this many digits (digits={spec.digits!r}), and that "
                f"{seq_len} tokens of prompt and answer are within what it was trained on "
                f"(its context holds {model.shape.n_ctx}); pretrained LMs often need few_shot examples.")
    expected = _expected(spec, tasks)
    trained = None if diffs else _trained_length(model, expected)
    if trained is not None and seq_len > trained:  # measured only when no field differs (else a symptom)
        diffs.append(f"prompt and answer are {seq_len} tokens here, but the model was trained on "
                     f"{trained}-token sequences (positions past {trained} are untrained)")
    if not diffs:
        return (f"{head} The prompts are in the model's own format ({short_repr(expected)}), so the model "
                "itself fails this task (see its card): analyses of it explain what it does, "
                "not how the answer is computed.")
    return (f"{head} Likely cause: the prompts are not what the model was trained on: "
            f"{'; '.join(diffs)}. Its own task is model.default_task"
            f"{'s' if len(tasks) > 1 else ''} = {', '.join(short_repr(t) for t in tasks)}; "
            "generate(model=model, n=...) writes prompts in it.")
