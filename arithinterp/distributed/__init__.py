"""Where work runs: here (the default) or on a Ray cluster.

An :class:`Executor` maps a function ``fn(model, item)`` over items, each worker holding
its own copy of the model (loaded once per worker process from a :class:`ModelRecipe`).
Results come back in item order, so a sweep that merges per-pair results in pair order
equals the serial run bit for bit. :class:`LocalExecutor` runs in this process and needs
nothing; :class:`RayExecutor` needs the ``ray`` extra (``pip install -e ".[ray]"``).
"""

from arithinterp.distributed.executor import (
    DistributedError,
    Executor,
    LocalExecutor,
    ModelRecipe,
)
from arithinterp.distributed.factory import make_executor
from arithinterp.distributed.ray_executor import RayExecutor

__all__ = ["DistributedError", "Executor", "LocalExecutor", "ModelRecipe", "RayExecutor", "make_executor"]
