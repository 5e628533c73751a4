"""What :func:`~arithinterp.reports.build_report` runs on: the model, the prompts, the pairs.

Everything here is checked before any forward pass: a model spec that does not
load, a task that is neither a spec nor prompts, a pair kind that does not
exist or a method name that is not one of :func:`report_methods` raises an
:class:`~arithinterp.errors.ArithInterpError` subclass saying what is valid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from arithinterp.errors import ConfigError, TaskError
from arithinterp.methods.registry import RunContext, methods
from arithinterp.models import Model, load_model
from arithinterp.tasks import PAIR_KINDS, PromptPairs, PromptSet, TaskSpec, generate, make_pairs
from arithinterp.tasks.tokenization import tokenize

__all__ = ["DEFAULT_N", "ReportInputs", "default_task", "report_methods", "resolve_inputs"]


def report_methods() -> tuple[str, ...]:
    """The registered methods a report can run (those with a report view), in the order it runs them."""
    views = [(spec.report.order, i, name) for i, (name, spec) in enumerate(methods().items())
             if spec.report is not None]
    return tuple(name for _, _, name in sorted(views))


#: Prompts (and pairs) per report when ``n`` is not given: enough for stable means
#: and bootstrap intervals, small enough that every zoo model's report takes a few
#: minutes on a 2-core CPU.
DEFAULT_N = 64

def default_task(model: Model) -> TaskSpec:
    """``model.default_task`` (the task a zoo model was trained on); ``ConfigError`` for a model
    without one."""
    if model.default_task is None:
        raise ConfigError(
            f"model {model.name!r} is not a zoo model, so it has no default task; pass task= "
            "(a TaskSpec or a PromptSet)"
        )
    return model.default_task


@dataclass(frozen=True)
class ReportInputs:
    """The resolved inputs of a report."""

    model: Model
    prompts: PromptSet
    pairs: PromptPairs
    answer: str  # "single" (one-token answers) or "multi" (teacher-forced)
    methods: tuple[str, ...]

    def context(self, *, seed: int, progress: bool, target: float, ablation: str = "mean",
                executor: Any = None) -> RunContext:
        """The context every method of the report runs in (tokenization and sweeps shared;
        ``executor`` shards the pair sweeps of the methods that take one)."""
        return RunContext(model=self.model, spec=self.prompts.spec, prompts=self.prompts, pairs=self.pairs,
                          seed=seed, progress=progress, model_spec=getattr(self.model, "spec", None), executor=executor,
                          params={"target": float(target), "ablation": ablation})


def _model(model: Any) -> Model:
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(os.fspath(model))
    raise ConfigError(
        f"model must be an arithinterp Model or a spec load_model accepts ('zoo:add-5d', a directory); "
        f"got {type(model).__name__}"
    )


def _methods(chosen: str | Sequence[str]) -> tuple[str, ...]:
    known = report_methods()
    if isinstance(chosen, str):
        if chosen == "all":
            return known
        chosen = [chosen]
    chosen = list(chosen)
    bad = [m for m in chosen if m not in known]
    if bad or not chosen:
        raise ConfigError(f"unknown report methods {bad or '(none given)'}; valid: 'all' or any of {', '.join(known)}")
    return tuple(m for m in known if m in chosen)


def _prompts(model: Model, task: Any, n: int | None, seed: int) -> PromptSet:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
        raise ConfigError(f"n (prompts in the report) must be an int >= 2, got {n!r}")
    if task is None or (isinstance(task, str) and task == "default"):
        task = default_task(model)
    if isinstance(task, dict):
        task = TaskSpec.parse(task)
    if isinstance(task, TaskSpec):
        return generate(task.model_copy(update={"n": n or DEFAULT_N, "seed": seed}))
    if isinstance(task, PromptSet):
        return task if n is None else task[: min(n, len(task))]
    raise TaskError(
        f"task must be a TaskSpec, a PromptSet, a mapping of TaskSpec fields, or None/'default' "
        f"(a zoo model's own task); got {type(task).__name__}"
    )




def _pairs(prompts: PromptSet, pairs: Any, seed: int) -> PromptPairs:
    if isinstance(pairs, PromptPairs):
        if pairs.clean.spec != prompts.spec:
            raise ConfigError("the given pairs were made from another task than the report's prompts")
        return pairs
    kind = "random" if pairs == "auto" else pairs
    if kind not in PAIR_KINDS:
        raise ConfigError(f"pairs must be 'auto', a pair kind ({', '.join(PAIR_KINDS)}) or PromptPairs; got {pairs!r}")
    if kind == "same_answer":
        raise ConfigError("pairs='same_answer' keeps the answer, so patching effects cannot be normalised; "
                          "use a kind that changes the answer (operand_a, operand_b, digit, operator, random)")
    return make_pairs(prompts, kind, seed=seed, on_impossible="drop")


def resolve_inputs(model: Any, task: Any, *, pairs: Any, n: int | None, methods: Any, seed: int) -> ReportInputs:
    """Check and resolve every input of a report (before any forward pass)."""
    chosen = _methods(methods)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(pairs, (str, PromptPairs)):
        raise ConfigError(f"pairs must be 'auto', a pair kind or PromptPairs, got {type(pairs).__name__}")
    resolved = _model(model)
    prompts = _prompts(resolved, task, n, seed)
    pair_set = _pairs(prompts, pairs, seed)
    if len(pair_set) < 2:
        raise TaskError(f"only {len(pair_set)} counterfactual pairs could be made; a report needs at least 2")
    prompts = pair_set.clean  # the clean side of the pairs (prompts with no counterfactual are dropped)
    answer = "single" if tokenize(prompts, resolved.tokenizer, answer="multi").answer_len == 1 else "multi"
    return ReportInputs(resolved, prompts, pair_set, answer, chosen)

