"""Lazy public names for package ``__init__`` modules.

The command line (``arithinterp --help``, ``arithinterp zoo list``) must start in well under a
second, so importing a package must not pull in torch, transformers or plotly. A package lists
its public names with the module that defines each; the module is imported on first access.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose name ``n`` lives in ``exports[n]``.

    A name that is also the submodule defining it (``arithinterp.zoo.train`` defines
    ``train``) keeps meaning the function even when the submodule is imported first.
    """
    shadowed = {name for name, module in exports.items() if module == f"{package}.{name}"}
    if shadowed:
        _keep_functions(sys.modules[package], shadowed)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)  # later lookups skip this hook
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *exports})

    return __getattr__, __dir__


def _keep_functions(package: types.ModuleType, names: set[str]) -> None:
    """Importing ``package.<name>`` binds the submodule as an attribute of the package;
    bind the function of that name instead, as an eager ``from .name import name`` did."""

    class _Package(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in names and isinstance(value, types.ModuleType) and hasattr(value, name):
                value = getattr(value, name)
            super().__setattr__(name, value)

    package.__class__ = _Package
