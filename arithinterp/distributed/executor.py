"""The executor contract and the local executor (no dependency beyond torch).

An executor runs ``fn(model, item)`` for each item of a list and returns the outputs in
item order. The model is described by a :class:`ModelRecipe` (what ``load_model`` needs),
so a worker process can load its own copy once and reuse it for every item it gets.
``threads`` is the torch intra-op thread count the work runs with: it changes the last
bits of float results, so it enters a pipeline step's fingerprint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch

from arithinterp.errors import ArithInterpError
from arithinterp.models import Model

ExecutorName = Literal["local", "ray"]


class DistributedError(ArithInterpError, RuntimeError):
    """An executor that cannot run: Ray missing, a cluster unreachable, a model workers cannot load."""


@dataclass(frozen=True)
class ModelRecipe:
    """What :func:`~arithinterp.models.load_model` needs to load a model again on a worker."""

    spec: str
    backend: str = "transformer_lens"
    device: str = "cpu"
    dtype: str = "float32"
    remote: bool | str = False

    @classmethod
    def of(cls, model: Model) -> ModelRecipe:
        """The recipe of a loaded model (``DistributedError`` for one built from a config dict)."""
        if model.spec.startswith("<"):
            raise DistributedError(
                f"model {model.name!r} was built in this process ({model.spec}), so workers cannot "
                "load it; save it as a Hugging Face directory and load that path instead"
            )
        dtype = str(model.dtype).removeprefix("torch.")
        return cls(spec=model.spec, backend=model.backend_name, device=str(model.device), dtype=dtype,
                   remote=getattr(model.backend, "remote", False))

    def load(self) -> Model:
        from arithinterp.models import load_model

        return load_model(self.spec, backend=self.backend, device=self.device, dtype=self.dtype,  # type: ignore[arg-type]
                          remote=self.remote)  # type: ignore[arg-type]


class Executor(ABC):
    """Maps ``fn(model, item)`` over items; outputs in item order."""

    name: str = "executor"

    @property
    @abstractmethod
    def threads(self) -> int:
        """Torch intra-op threads the work runs with (part of a step's fingerprint)."""

    @abstractmethod
    def map(self, fn: Callable[[Model, Any], Any], items: Sequence[Any], *, model: Model,
            desc: str = "", progress: bool = False) -> list[Any]:
        """``[fn(m, item) for item in items]`` where ``m`` is ``model`` or a worker's copy of it."""

    def submit(self, fn: Callable[[Model, Any], Any], item: Any, *, model: Model) -> Any:
        """Start ``fn(model, item)`` (here: when :meth:`result` asks for it); returns a handle."""
        return partial(fn, model, item)

    def result(self, handle: Any) -> Any:
        """The output of a submitted item."""
        return handle()

    def close(self) -> None:
        """Release what the executor holds (a Ray connection it opened); nothing by default."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Everything in this process, on ``model`` itself: the default."""

    name = "local"

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def map(self, fn: Callable[[Model, Any], Any], items: Sequence[Any], *, model: Model,
            desc: str = "", progress: bool = False) -> list[Any]:
        return [fn(model, item) for item in items]

