"""Fixtures: a directory of two runs whose reports hold real method outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dashboard.reportdir import build_report_dir


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    """``runs/`` with ``full/report/`` (every result the dashboard reads) and ``small/report/``
    (patching, DLA and the circuit only; another seed), as the pipeline lays them out."""
    root = tmp_path_factory.mktemp("dashboard") / "runs"
    build_report_dir(root / "full" / "report", seed=7, n=48, full=True)
    build_report_dir(root / "small" / "report", seed=3, n=32, full=False)
    return root
