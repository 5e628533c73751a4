"""The Ray executor: items become Ray tasks; each worker process loads the model once.

``RayExecutor()`` starts a local Ray instance (bound to 127.0.0.1, one worker per CPU, or
``num_workers``); ``RayExecutor(address="host:port")`` joins a running cluster (``ray start
--head``) and fails within ``connect_timeout`` seconds, with nothing run, when nothing answers
there. Every task runs ``fn(model, item)`` on a worker's copy of the model (one load per
worker process, kept for the tasks that follow) with ``threads`` torch threads, and is
retried up to ``max_retries`` times when its worker dies. Outputs come back in item order.
A task that raises an arithinterp error (a model a worker cannot load, a bad option)
re-raises that error here, not Ray's wrapper of it.

Workers started by a local instance import arithinterp from where this process does; on a
cluster of several machines it must be installed on every node.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from arithinterp.distributed.executor import DistributedError, Executor, ModelRecipe
from arithinterp.errors import ArithInterpError
from arithinterp.models import Model

_MODELS: dict[ModelRecipe, Model] = {}
"""A worker process's models, loaded once per recipe and kept for the tasks that follow."""

_TASKS: dict[int, Any] = {}


def worker_model(recipe: ModelRecipe) -> Model:
    """This worker's copy of the model (loaded on first use)."""
    if recipe not in _MODELS:
        _MODELS[recipe] = recipe.load()
    return _MODELS[recipe]


def _run_item(recipe: ModelRecipe, fn: Callable[[Model, Any], Any], item: Any, threads: int) -> Any:
    torch.set_num_threads(threads)
    return fn(worker_model(recipe), item)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DistributedError(
            'the Ray executor needs Ray: pip install -e ".[ray]" (or pip install ray); '
            "without it, run locally (the default)"
        ) from None
    return ray


def check_reachable(address: str, timeout: float) -> None:
    """``DistributedError`` unless something accepts TCP connections at ``address`` in ``timeout`` s.

    ``ray.init`` on a dead address retries for a long while; this answers first.
    """
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise DistributedError(f"Ray address {address!r} is not host:port (e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise DistributedError(
            f"no Ray cluster answers at {address} ({type(err).__name__}: {err}); start one with "
            f"`ray start --head --node-ip-address=127.0.0.1 --port={port}`, or leave out --address to "
            "start a local one"
        ) from None


def _package_root() -> str:
    import arithinterp

    return str(Path(arithinterp.__file__).resolve().parent.parent)


class RayExecutor(Executor):
    """Items as Ray tasks, on a local Ray instance or the cluster at ``address``.

    Args:
        address: a running cluster (``"host:port"``, ``"ray://host:port"`` or ``"auto"``);
            ``None`` starts a local instance on 127.0.0.1 (or uses the one this process
            already started with ``ray.init``).
        num_workers: CPUs of a local instance it starts (default: all); tasks take one CPU each.
        threads: torch intra-op threads per task (default 1: one task per core).
        max_retries: retries of a task whose worker died.
        connect_timeout: seconds to wait for ``address`` to answer.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_workers: int | None = None, threads: int = 1,
                 max_retries: int = 3, connect_timeout: float = 5.0):
        if threads < 1 or max_retries < 0:
            raise DistributedError("threads must be >= 1 and max_retries >= 0")
        self.address, self._threads, self.max_retries = address, threads, max_retries
        ray = _import_ray()
        self._owns = False
        if address is not None:  # before anything else: a dead address fails in seconds
            check_reachable(address, connect_timeout)
        if not ray.is_initialized():
            self._init(ray, address, num_workers)
            self._owns = True
        self._ray = ray
        self._task = ray.remote(num_cpus=1, max_retries=max_retries)(_run_item)

    def _init(self, ray: Any, address: str | None, num_workers: int | None) -> None:
        # Workers are children of the raylet this starts, so they import arithinterp from here.
        paths = [_package_root(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                   "logging_level": "warning"}
        if address is None:
            options.update(num_cpus=num_workers, _node_ip_address="127.0.0.1")
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, TimeoutError) as err:
            raise DistributedError(f"could not connect to the Ray cluster at {address}: {err}") from None

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def num_workers(self) -> int:
        """CPUs of the cluster: how many tasks run at once."""
        return int(self._ray.cluster_resources().get("CPU", 1))

    def submit(self, fn: Callable[[Model, Any], Any], item: Any, *, model: Model | ModelRecipe) -> Any:
        """Start ``fn(worker's model, item)``; :meth:`result` waits for it."""
        recipe = model if isinstance(model, ModelRecipe) else ModelRecipe.of(model)
        return self._task.remote(recipe, fn, item, self._threads)

    def result(self, handle: Any) -> Any:
        """The output of a submitted task (its arithinterp error re-raised as is)."""
        return self._get([handle])[0]

    def map(self, fn: Callable[[Model, Any], Any], items: Sequence[Any], *, model: Model,
            desc: str = "", progress: bool = False) -> list[Any]:
        recipe = ModelRecipe.of(model)
        fn_ref = self._ray.put(fn)
        refs = [self._task.remote(recipe, fn_ref, item, self._threads) for item in items]
        with tqdm(total=len(refs), desc=f"{desc} (ray)", disable=not progress, leave=False) as bar:
            pending = list(refs)
            while pending:  # progress as the workers finish their items
                done, pending = self._ray.wait(pending, num_returns=1)
                bar.update(len(done))
        return self._get(refs)

    def _get(self, refs: list[Any]) -> list[Any]:
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(refs)
        except exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, ArithInterpError):
                raise cause from None
            raise
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError) as err:
            raise DistributedError(f"a Ray worker died {self.max_retries + 1} times running one task: "
                                   f"{err}") from None

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False

