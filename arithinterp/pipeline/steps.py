"""What each pipeline step computes: a check run before any step starts, and the step itself.

A step of kind ``k`` runs the registered method ``k`` (:mod:`arithinterp.methods.registry`)
on a :class:`~arithinterp.methods.RunContext` with the step's validated options; the
``report`` step runs :func:`~arithinterp.reports.build_report`. A step returns one object
with ``save(directory)`` (a :class:`~arithinterp.results.Result`, or the report step's
:class:`~arithinterp.reports.AttributionReport`), saved in its step directory, or a mapping
``part -> Result | TunedLens`` (each saved in ``<step>/<part>/``). Nothing here reads files or
the environment.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from arithinterp.methods.registry import RunContext, get_method

StepOutput = Any  # a Result, an AttributionReport, or {part: Result | TunedLens}

__all__ = ["RunContext", "StepOutput", "check_step", "output_warnings", "run_step", "seed_everything"]


def check_step(step: Any, ctx: RunContext) -> None:
    """Everything about ``step`` that can fail before it runs (its method's ``check``)."""
    if step.kind != "report":
        get_method(step.kind).precheck(ctx, step)


def run_step(step: Any, ctx: RunContext) -> StepOutput:
    """Run ``step`` on ``ctx``."""
    if step.kind == "report":
        return _run_report(step, ctx)
    return get_method(step.kind).call(ctx, step)


def _run_report(step: Any, ctx: RunContext) -> StepOutput:
    from arithinterp.reports import build_report

    methods = step.methods if step.methods == "all" else list(step.methods)
    return build_report(ctx.model, ctx.spec, pairs=step.pairs, n=step.n or ctx.spec.n, methods=methods,
                        target=step.target, ablation=step.ablation, seed=ctx.seed, progress=ctx.progress,
                        executor=ctx.executor)


def output_warnings(output: StepOutput) -> list[str]:
    """The warnings a step's output carries (a :class:`~arithinterp.errors.ChanceAccuracyWarning`
    kept in a result's ``meta.extra["warnings"]`` or a report's ``summary["warnings"]``), once each.

    They travel with the output, so a step run on a Ray worker reports them as one run here.
    """
    found: list[str] = []
    for part in (output.values() if isinstance(output, dict) else [output]):
        meta = getattr(part, "meta", None)
        if meta is not None and isinstance(getattr(meta, "extra", None), dict):
            found += meta.extra.get("warnings") or []
        summary = getattr(part, "summary", None)
        if isinstance(summary, dict):
            found += summary.get("warnings") or []
    return list(dict.fromkeys(str(w) for w in found))


def seed_everything(seed: int) -> None:
    """Seed torch and numpy's global generators, so a step run alone equals a step run after others."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
