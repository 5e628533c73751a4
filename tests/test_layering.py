"""Only the backends may import the interpretability libraries.

Methods, results, reports and the pipeline speak in Sites; if one of them
imported transformer_lens or nnsight it would work on one backend only. The
check reads the source with ``ast`` so an import hidden inside a function, a
``try`` or an ``if TYPE_CHECKING`` block is caught too, as is
``importlib.import_module("nnsight")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "arithinterp"
BACKENDS = PACKAGE / "models" / "backends"
RESTRICTED = frozenset({"transformer_lens", "nnsight"})


def restricted_imports(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """``(line, module)`` for each import of a restricted top-level package in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif _is_dynamic_import(node):
            names = [node.args[0].value]
        else:
            continue
        found.extend((node.lineno, name) for name in names if name.split(".")[0] in RESTRICTED)
    return found


def _is_dynamic_import(node: ast.AST) -> bool:
    """``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")``."""
    if not (isinstance(node, ast.Call) and node.args):
        return False
    first = node.args[0]
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__")


def test_only_backends_import_transformer_lens_or_nnsight():
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, f"no Python files under {PACKAGE}"
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}"
        for path in files
        if BACKENDS not in path.parents
        for line, module in restricted_imports(path.read_text(encoding="utf-8"), str(path))
    ]
    assert not offenders, (
        "only arithinterp/models/backends/ may import transformer_lens or nnsight; "
        "address activations with Site and go through Model instead:\n" + "\n".join(offenders)
    )


def test_backends_do_import_them():
    """Guards the scan itself: it must see the imports the backends really have."""
    seen = {
        module.split(".")[0]
        for path in BACKENDS.rglob("*.py")
        for _, module in restricted_imports(path.read_text(encoding="utf-8"), str(path))
    }
    assert seen == RESTRICTED


@pytest.mark.parametrize(
    "source",
    [
        "import nnsight",
        "import transformer_lens.utils as u",
        "from nnsight import TransformersModel",
        "from transformer_lens.model_bridge import TransformerBridge",
        "def f():\n    import nnsight\n",
        "class C:\n    def m(self):\n        from transformer_lens import patching\n",
        "try:\n    import nnsight\nexcept ImportError:\n    pass\n",
        "import os, nnsight",
        "import importlib\nimportlib.import_module('nnsight')",
        "__import__('transformer_lens')",
    ],
)
def test_scan_catches(source):
    assert restricted_imports(source)


@pytest.mark.parametrize(
    "source",
    [
        "import nnsight_extras",
        "from .nnsight import x",
        "from arithinterp.models.backends import nnsight_backend",
        "x = 'import nnsight'",
    ],
)
def test_scan_ignores(source):
    assert not restricted_imports(source)
