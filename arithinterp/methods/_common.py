"""Helpers shared by the method modules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from arithinterp.errors import MethodError
from arithinterp.models import Model
from arithinterp.results import ResultMeta


def make_meta(
    method: str,
    model: Model | None,
    prompts: Any = None,
    *,
    options: dict | None = None,
    seed: int | None = None,
    extra: dict | None = None,
    dataset_hash: str | None = None,
) -> ResultMeta:
    """Record what changes the numbers: model, backend, dtype, dataset hash, seed, options.

    The dataset hash is ``prompts.hash``, or ``dataset_hash`` when the prompts are not at hand
    (a tokenized batch carries its own).
    """
    if seed is None and prompts is not None:
        seed = getattr(getattr(prompts, "spec", None), "seed", None)
    return ResultMeta(
        method=method,
        model=model.name if model is not None else "example",
        backend=model.backend_name if model is not None else "none",
        dtype=str(model.dtype).removeprefix("torch.") if model is not None else "float32",
        dataset_hash=dataset_hash if dataset_hash is not None else getattr(prompts, "hash", None),
        seed=seed,
        options=dict(options or {}),
        extra=dict(extra or {}),
    )


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an int, or :class:`MethodError` unless it is an int of at least ``minimum``
    (a bool, float or string is refused: ``batch_size="8"`` would fail deep in a loop)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise MethodError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def token_batches(tokenized: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(tokens, answer_tokens)`` in batches of at most ``batch_size`` prompts."""
    check_positive_int("batch_size", batch_size)
    n = tokenized.tokens.shape[0]
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        yield tokenized.tokens[start:stop], tokenized.answer_tokens[start:stop]
