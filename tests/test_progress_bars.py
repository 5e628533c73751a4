"""Progress in log files: when stderr is not a terminal, bars are whole lines (no carriage
returns or escape sequences), and transformers' loading bars are converted too."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import yaml

from arithinterp.progress_bars import LineProgress, hf_progress, line_mode, tqdm

ROOT = Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_mode_follows_the_stream():
    assert line_mode(io.StringIO()) and not line_mode(_Terminal())
    assert isinstance(tqdm(range(3), file=io.StringIO()), LineProgress)
    assert not isinstance(tqdm(range(3), file=_Terminal()), LineProgress)


def test_line_progress_writes_whole_lines():
    out = io.StringIO()
    with LineProgress(total=4, desc="outer", unit="step", file=out, interval=0) as outer:
        for i in range(2):
            for _ in LineProgress(range(3), desc="inner", leave=False, file=out, interval=1e9):
                pass  # a fast nested bar stays silent
            outer.set_postfix(loss=0.123456, step=i)
            outer.update(2)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[0] == "outer: 0/4 step (0%) elapsed 00:00"
    assert lines[1].startswith("outer: 2/4 step (50%) elapsed 00:00, eta 00:00 [loss=0.123, step=0]")
    assert lines[-1] == "outer: 4/4 step (100%) done in 00:00 [loss=0.123, step=1]"
    assert not any(line.startswith("inner") for line in lines)
    slow = io.StringIO()
    for _ in LineProgress(range(2), desc="inner", leave=False, file=slow, interval=0):
        pass  # a nested bar that ran past the interval reports and closes with a line
    assert slow.getvalue().splitlines() == ["inner: 1/2 it (50%) elapsed 00:00, eta 00:00",
                                            "inner: 2/2 it (100%) elapsed 00:00",
                                            "inner: 2/2 it (100%) done in 00:00"]


def test_transformers_bars_become_lines_and_the_hook_is_restored(monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with hf_progress():
        bar = hf_logging.tqdm(range(5), desc="Loading weights")
        assert isinstance(bar, LineProgress) and list(bar) == list(range(5))
    assert sys.stderr.getvalue() == ""  # a fast load writes nothing
    assert not isinstance(hf_logging.tqdm(range(1), disable=True), LineProgress)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with hf_progress():  # on a terminal, transformers keeps its own bars
        assert not isinstance(hf_logging.tqdm(range(1), disable=True), LineProgress)


def test_cli_run_with_stderr_in_a_file(tmp_path, tiny_hf_dirs):
    config = {
        "name": "tiny-log",
        "model": str(tiny_hf_dirs["gpt2"]),
        "task": {"operation": "add", "digits": 2, "format": "fixed", "n": 16, "seed": 1},
        "pairs": {"kind": "digit", "column": 0},
        "report": False,
        "steps": [{"kind": "evaluate"}, {"kind": "logit_lens", "k": 3},
                  {"kind": "patching", "sites": "attn_head", "n_boot": 10}],
    }
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "arithinterp.pipeline.cli", "run", "pipe.yaml", "--runs-dir", "runs"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, env=env, timeout=300, check=False,
        )
    text = log.read_bytes()
    assert proc.returncode == 0, text.decode()[-2000:]
    assert b"\r" not in text and b"\x1b" not in text, text
    assert b"Loading weights" not in text  # transformers' bar, fast here, stays silent
    lines = text.decode().splitlines()
    assert lines[0] == "tiny-log: 0/3 step (0%) elapsed 00:00"
    assert lines[-1].startswith("tiny-log: 3/3 step (100%) done in ") and lines[-1].endswith("[patching]")
    assert b"patching: done" in proc.stdout


def test_write_prints_a_line():
    out = io.StringIO()
    tqdm.write('{"step": 10}', file=out)
    assert out.getvalue() == '{"step": 10}\n'
