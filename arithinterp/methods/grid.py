"""Operand grids: every ``(operand_a, operand_b)`` pair of a task, and a model's activations over it.

Grid methods (key frequencies of neurons and heads, neuron K/KV maps) need a
model's activations on every operand pair, not on a sample:

- :func:`operand_grid_spec`: the task with an explicit operand domain, or a
  :class:`~arithinterp.errors.MethodError` that says why it has no grid small
  enough to sweep.
- :func:`operand_grid`: the pairs, their results, prompts and answers (``a`` major).
- :func:`valid_cells`: which pairs are problems of the task (a nonzero divisor, no negative
  difference when the task has none, a result within ``max_result``); analyses leave the
  others out instead of reading a garbage answer there.
- :func:`grid_activations`: one sweep over the grid that caches any sites at
  once, each reshaped to ``[operand_a, operand_b, ...]``, so several analyses can
  share it instead of each running the grid again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch

from arithinterp.errors import ArithInterpError, MethodError
from arithinterp.methods.registry import NotApplicable
from arithinterp.models import Model, Site
from arithinterp.tasks import TaskSpec
from arithinterp.tasks.arithmetic import compute_answers
from arithinterp.tasks.formats import answer_text, query_text

__all__ = ["MAX_GRID_SIDE", "HeadOutput", "grid_activations", "operand_grid", "operand_grid_spec",
           "report_grid_spec", "valid_cells"]

#: The largest operand domain (values per operand) the report's grid methods (Fourier, neuron
#: maps) sweep.
MAX_GRID_SIDE = 150

HeadOutput = Literal["z", "write"]
"""What an ``attn_head`` site yields: the head output ``z`` (``[..., head, d_head]``), or what
the head writes to the residual stream, ``z @ W_O[head]`` (``[..., head, d_model]``)."""


def operand_grid_spec(spec: TaskSpec, *, max_side: int | None = None) -> TaskSpec:
    """``spec`` with an explicit operand domain (``operand_range``) for :func:`operand_grid`.

    Raises :class:`~arithinterp.errors.MethodError` when the task has no grid worth sweeping:
    few-shot prompts (the grid holds bare queries only), or more than ``max_side`` values per
    operand (``None``: no limit). A ``modadd`` task's domain is ``0..p-1`` unless it sets one.
    """
    if spec.few_shot:
        raise MethodError("few-shot prompts: the operand grid sweeps bare queries only")
    if spec.operation == "modadd":
        side = spec.p if spec.operand_range is None else spec.operand_range[1] - spec.operand_range[0] + 1
    else:
        side = spec.max_operand - spec.min_operand + 1
        if spec.operand_range is None:
            spec = spec.model_copy(update={"operand_range": (spec.min_operand, spec.max_operand)})
    if max_side is not None and side > max_side:
        raise MethodError(f"the operands take {side} values each (more than {max_side}): no operand grid "
                          f"small enough to sweep every (a, b)")
    return spec


def report_grid_spec(spec: TaskSpec) -> TaskSpec:
    """:func:`operand_grid_spec` with at most :data:`MAX_GRID_SIDE` values per operand, for a
    report: a task without such a grid is :class:`~arithinterp.methods.NotApplicable`."""
    try:
        return operand_grid_spec(spec, max_side=MAX_GRID_SIDE)
    except MethodError as err:
        raise NotApplicable(str(err)) from err


def operand_grid(spec: TaskSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Every ``(a, b)`` pair of ``spec``'s operand domain with results, prompts and answers.

    Returns ``(a, b, result, queries, answers)``, one entry per pair, ``a`` major (row
    ``i * side + j`` is ``(lo + i, lo + j)``).
    """
    if not isinstance(spec, TaskSpec):
        raise MethodError(
            f"an operand-grid method takes the task's TaskSpec (it builds every (a, b) pair "
            f"itself), got {type(spec).__name__}; pass prompts.spec or a TaskSpec(...)"
        )
    if spec.operation == "modadd":
        lo, hi = 0, spec.p - 1
    elif spec.operand_range is not None:
        lo, hi = spec.operand_range
    else:
        raise ArithInterpError("neuron maps need operand_range (or operation='modadd' with p)")
    values = np.arange(lo, hi + 1)
    a, b = (g.ravel() for g in np.meshgrid(values, values, indexing="ij"))
    result = compute_answers(spec.operation, a, b, spec.p)
    queries = [query_text(int(x), int(y), spec) for x, y in zip(a, b)]
    answers = [answer_text(int(r), spec) for r in result]
    return a, b, result, queries, answers


def valid_cells(spec: TaskSpec, a: np.ndarray, b: np.ndarray, result: np.ndarray, *,
                max_result: int | None = None) -> np.ndarray:
    """Which cells of :func:`operand_grid` are problems of ``spec``: a boolean per cell.

    A cell is left out when its divisor is 0 (``floordiv``, ``mod``: ``5/0`` has no answer), when
    it is a subtraction with a negative result and the task has none (``allow_negative=False``:
    ``a >= b`` only, as a model trained on non-negative differences sees them), or when its result
    exceeds ``max_result`` (``None``: no limit), e.g. products above the largest single-token
    number (Nikankin et al. keep only problems whose result is one token).
    """
    a, b, result = (np.asarray(x, dtype=np.int64) for x in (a, b, result))
    keep = np.ones(a.shape, dtype=bool)
    if spec.operation in ("floordiv", "mod"):
        keep &= b != 0
    if spec.operation == "sub" and not spec.allow_negative:
        keep &= a >= b
    if max_result is not None:
        keep &= result <= max_result
    return keep


def grid_activations(
    model: Model,
    spec: TaskSpec,
    sites: Sequence[Site],
    *,
    heads: HeadOutput = "z",
    batch_size: int = 1024,
) -> dict[Site, torch.Tensor]:
    """Activations of ``sites`` on every prompt of ``spec``'s operand grid, in one sweep.

    Args:
        model: the model.
        spec: the task; its ``operand_range`` (or ``p`` for ``modadd``) gives the grid
            (:func:`operand_grid_spec` makes one explicit).
        sites: the sites to cache (e.g. ``Site("mlp_post", 0, pos=-1)``); a site without a
            position keeps its ``pos`` axis.
        heads: for ``attn_head`` sites, ``"z"`` (the head output) or ``"write"`` (``z @ W_O``,
            what each head adds to the residual stream).
        batch_size: prompts per forward pass.

    Returns:
        ``{site: [operand_a, operand_b, *site axes]}`` in float64 on the CPU, operand values
        ascending (the order of :func:`operand_grid`).
    """
    if heads not in get_args(HeadOutput):
        raise MethodError(f"heads={heads!r}; valid: {list(get_args(HeadOutput))}")
    sites = model.validate(list(sites))
    a, _b, _r, queries, _answers = operand_grid(spec)
    side = int(round(np.sqrt(len(a))))
    tokens = model.to_tokens(queries)
    parts: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    W_O = model.weights().W_O.detach().double() if heads == "write" else None
    for start in range(0, len(a), batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size], sites)
        for s in sites:
            act = cache[s].detach().double().cpu()
            if W_O is not None and s.kind == "attn_head":
                act = _head_write(act, W_O[s.layer].cpu(), s.head)
            parts[s].append(act)
    return {s: torch.cat(v).reshape(side, side, *v[0].shape[1:]) for s, v in parts.items()}


def _head_write(z: torch.Tensor, W_O: torch.Tensor, head: int | None) -> torch.Tensor:
    """What heads write to the residual stream: ``z [..., head, d_head] @ W_O [head, d_head, d_model]``
    (or one head's ``z [..., d_head] @ W_O[head]``)."""
    if head is not None:
        return torch.einsum("...e,em->...m", z, W_O[head])
    return torch.einsum("...he,hem->...hm", z, W_O)
