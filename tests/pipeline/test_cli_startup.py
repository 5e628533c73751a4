"""The command line starts without the heavy libraries: ``--help`` and ``zoo list`` import
neither torch nor transformers (nor plotly, dash, transformer_lens, nnsight)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "transformer_lens", "nnsight", "plotly", "dash", "sklearn")


def _run_cli(*args: str) -> tuple[str, set[str]]:
    """Run ``arithinterp ARGS`` under ``python -X importtime`` (the installed console script,
    else ``-m arithinterp.pipeline.cli``, the module behind it); return stdout and the
    top-level packages it imported."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    script = Path(sys.executable).with_name("arithinterp")  # pip's script beside the interpreter
    entry = [str(script)] if script.is_file() else ["-m", "arithinterp.pipeline.cli"]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *entry, *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {
        m.group(1).split(".")[0]
        for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)", proc.stderr, re.M)
    }
    assert "arithinterp" in imported  # the import-time log was read
    return proc.stdout, imported


@pytest.mark.parametrize("args", [("--help",), ("zoo", "list"), ("zoo", "--help"), ("run", "--help")])
def test_cli_starts_without_heavy_imports(args):
    out, imported = _run_cli(*args)
    assert not imported & set(HEAVY), f"`arithinterp {' '.join(args)}` imported {imported & set(HEAVY)}"
    if args == ("zoo", "list"):
        assert re.search(r"^add-5d\s+add\s+exact_match", out, re.M), out
    else:
        assert "Usage:" in out


def test_lazy_package_names_still_resolve():
    code = (
        "import sys, arithinterp, arithinterp.zoo, arithinterp.pipeline\n"
        "assert 'torch' not in sys.modules\n"
        "from arithinterp import Site, load_model\n"
        "import arithinterp.zoo.train\n"  # the submodule first: `zoo.train` stays the function
        "from arithinterp.zoo import list_zoo, train\n"
        "from arithinterp.pipeline import run_pipeline\n"
        "assert callable(train) and train.__module__ == 'arithinterp.zoo.train'\n"
        "assert Site('resid_pre', layer=0).label == 'L0 pre'\n"
        "assert 'load_model' in dir(arithinterp)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
