"""An executor by name: what the pipeline's ``executor:`` and the CLI's ``--executor`` give."""

from __future__ import annotations

from typing import Any

from arithinterp.distributed.executor import DistributedError, Executor, ExecutorName, LocalExecutor
from arithinterp.distributed.ray_executor import RayExecutor


def make_executor(name: ExecutorName | Executor | None = None, *, address: str | None = None,
                  **options: Any) -> Executor:
    """An executor by name (``"local"`` or ``"ray"``; ``address`` joins a running Ray cluster)."""
    if isinstance(name, Executor):
        return name
    if name in (None, "local"):
        if address is not None:
            raise DistributedError("--address is the address of a Ray cluster; use it with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, **options)
    raise DistributedError(f"unknown executor {name!r}; valid: 'local', 'ray'")
