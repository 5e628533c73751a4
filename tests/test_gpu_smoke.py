"""benchmarks/gpu_smoke.py (run on a GPU when one is lent) imports and runs its CPU fallback:
the same code on a tiny model, where both backends must agree."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_smoke.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweeps_run_on_the_cpu_and_the_backends_agree(tmp_path, capsys, one_intra_op_thread):
    _module().sweeps("cpu", "tiny", tmp_path)
    out = capsys.readouterr().out
    found = re.search(r"backends agree: exact max\|diff\| (\S+), AtP max\|diff\| (\S+)", out)
    assert found, out
    assert float(found.group(1)) < 1e-4 and float(found.group(2)) < 1e-4
    assert out.count("cells/s") == 2


@pytest.mark.slow
def test_the_whole_script_runs_its_cpu_fallback():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    got = subprocess.run([sys.executable, str(SCRIPT), "--cpu-fallback"], capture_output=True, text=True,
                         env=env, timeout=900, check=True)
    assert "main job (quickstart, 100 prompts)" in got.stdout
    assert "backends agree" in got.stdout and "total" in got.stdout
