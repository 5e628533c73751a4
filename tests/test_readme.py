"""The README's quickstart block runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    text = README.read_text()
    setup = text.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(commands) == 2
    assert "arithinterp run experiments/" in commands[0]
    assert 'python -m pytest -m "not slow"' in commands[1]


def test_quickstart_runs(capsys):
    (block,) = _python_blocks()
    assert len(block.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    accuracy = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert accuracy > 0.99, "zoo:add-5d is a 99.999% adder"
    assert namespace["fig"].data, "the lens figure has traces"
