"""Where a pipeline's steps run: one after another here, or on a Ray cluster.

:class:`StepRunner` is what the runner asks for each step's output. Locally it runs the
step when asked. With a :class:`~arithinterp.distributed.RayExecutor`, :meth:`StepRunner.start`
submits every step still to compute as a Ray task at once, so independent steps run side by
side on the workers (each worker process loads the model once), and :meth:`StepRunner.output`
waits for each in step order: the runner saves and records steps exactly as in a local run,
and a step that finished is never recomputed. Steps whose method shards its own pairs or
prompts over workers (``patching``, ``attribution``, ``edge_attribution``, ``mediation``,
``probes``: every method that takes ``executor=``; and the ``report``, whose views pass it
to those methods) run in this process with the executor in
their context instead, so a large sweep spreads over the whole cluster. A task whose worker dies is retried by Ray; a
step seeds the global generators first wherever it runs, so results equal the local run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from arithinterp.distributed.executor import Executor, LocalExecutor, ModelRecipe
from arithinterp.methods.registry import RunContext, get_method
from arithinterp.models import Model
from arithinterp.pipeline.steps import run_step, seed_everything


def shards_itself(step: Any) -> bool:
    """Whether ``step``'s method takes an ``executor`` (it spreads its own pairs over workers);
    the report does, through the methods it runs."""
    import inspect

    if step.kind == "report":
        return True
    return "executor" in inspect.signature(get_method(step.kind).function).parameters


def _step_task(model: Model, payload: tuple[Any, RunContext, int]) -> Any:
    """A whole step on a worker: its context gets the worker's model, the generators its seed."""
    step, ctx, seed = payload
    seed_everything(seed)
    return run_step(step, replace(ctx, model=model, progress=False))


class StepRunner:
    """Runs steps on ``executor`` (``None``: here, one after another)."""

    def __init__(self, executor: Executor | None, model: Model):
        self.executor = executor or LocalExecutor()
        self.model = model
        self._handles: dict[int, Any] = {}

    @property
    def distributed(self) -> bool:
        return not isinstance(self.executor, LocalExecutor)

    def start(self, pending: list[tuple[int, Any, RunContext]], seed: int) -> None:
        """Submit every step of ``pending`` that runs as one task (nothing, when local)."""
        if not self.distributed:
            return
        recipe = ModelRecipe.of(self.model)
        for index, step, ctx in pending:
            if not shards_itself(step):
                detached = replace(ctx, model=None, results={}, _memo={})
                self._handles[index] = self.executor.submit(_step_task, (step, detached, seed), model=recipe)

    def output(self, index: int, step: Any, ctx: RunContext) -> Any:
        """The step's output: a submitted task's result, or the step run here."""
        if index in self._handles:
            return self.executor.result(self._handles.pop(index))
        if self.distributed:
            ctx = replace(ctx, executor=self.executor)
        return run_step(step, ctx)
