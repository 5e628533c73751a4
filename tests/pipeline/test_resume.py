"""A real `arithinterp run`, killed (SIGKILL) in the middle of a step, resumes on rerun and
ends with exactly the results of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from arithinterp.pipeline import load_config, run_pipeline
from arithinterp.results import Result

PIPELINE = {
    "name": "resume",
    "model": "zoo:add-2d-tok",
    "task": {"operation": "add", "operand_range": [0, 99], "format": "plain", "n": 100, "seed": 3},
    "pairs": {"kind": "operand_a"},
    "report": False,
    "steps": [
        {"kind": "evaluate"},
        {"kind": "patching", "sites": "resid_pre", "answer": "single", "n_boot": 100},
        {"kind": "probes", "targets": ["SC_0"], "n_boot": 10},
    ],
}
STEPS = ("evaluate", "patching", "probes")


def _cli(config: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "arithinterp.pipeline.cli", "run", str(config), "--runs-dir", str(runs)]


def _temp_dirs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if ".tmp-" in p.name) if run_dir.is_dir() else []


def _assert_same(a: Result, b: Result) -> None:
    assert type(a) is type(b)
    np.testing.assert_array_equal(a.values.values, b.values.values)
    assert a.values.coords.to_dataset().equals(b.values.coords.to_dataset())
    assert sorted(a.extras) == sorted(b.extras)
    for name in a.extras:
        np.testing.assert_array_equal(a.extras[name].values, b.extras[name].values)


def test_killed_run_resumes_with_identical_results(tmp_path):
    config_path = tmp_path / "resume.yaml"
    config_path.write_text(yaml.safe_dump(PIPELINE))
    runs = tmp_path / "runs"
    run_dir = runs / "resume"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    # 1. Start a real run and SIGKILL it while `patching` is being computed: `evaluate`
    #    is complete and patching's temporary directory exists, but not its step.json.
    proc = subprocess.Popen(_cli(config_path, runs), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "evaluate" / "step.json").is_file() and any(
                name.startswith(".patching.tmp-") for name in _temp_dirs(run_dir)
            ):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed mid-step"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "patching" / "step.json").exists(), "killed after the step completed"
    assert not (run_dir / "probes").exists()
    assert _temp_dirs(run_dir), "the killed step leaves its temporary directory behind"
    evaluate_record = (run_dir / "evaluate" / "step.json").read_text()

    # 2. Rerun: the complete step is skipped (its files untouched), the leftovers are removed,
    #    the interrupted step and the one after it are computed.
    rerun = subprocess.run(_cli(config_path, runs), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "evaluate: skipped (complete)" in rerun.stdout
    assert "patching: done" in rerun.stdout and "probes: done" in rerun.stdout
    assert (run_dir / "evaluate" / "step.json").read_text() == evaluate_record
    assert _temp_dirs(run_dir) == []
    assert not (run_dir / ".lock").exists()

    # 3. Every saved result equals an uninterrupted run's.
    config = load_config(config_path)
    fresh = run_pipeline(config, runs_dir=tmp_path / "fresh", progress=False, log=lambda _: None)
    assert sorted(fresh.results) == sorted(STEPS)
    for name in STEPS:
        record = json.loads((run_dir / name / "step.json").read_text())
        # the CLI ran on one thread (OMP_NUM_THREADS=1): the thread count is part of a fingerprint
        assert record["fingerprint"] == config.fingerprint(STEPS.index(name), threads=1)
        _assert_same(Result.load(run_dir / name), fresh.results[name])
