"""Every notebook in notebooks/ executes top to bottom on the zoo, and none is committed
with outputs (so none can be stale: CI produces the outputs, the repository never does)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
#: Where executed copies go (CI artifacts); a temp dir otherwise.
ARTIFACTS = os.environ.get("ARITHINTERP_TEST_ARTIFACTS")


def test_there_is_a_tour_and_one_notebook_per_experiment() -> None:
    names = [p.stem for p in NOTEBOOKS]
    assert names[0] == "00_tour", names
    assert len(names) >= 7, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_executes(path: Path, tmp_path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    workdir = tmp_path / "work"
    workdir.mkdir()
    client = NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    out_dir = Path(ARTIFACTS) / "notebooks" if ARTIFACTS else tmp_path
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, out_dir / path.name)
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
