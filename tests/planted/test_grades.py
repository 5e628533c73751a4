"""The planted benchmark's grades: the scoring rules, and no grade below the recorded one.

``recorded_grades.json`` is written by ``python benchmarks/planted_circuits.py --record`` (the
table in ``docs/methods/planted-benchmark.md``). A method that gets worse on a planted model
fails here; one that gets better should be re-recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from arithinterp.errors import ConfigError
from arithinterp.planted import PLANTED
from arithinterp.planted.grade import (
    GRADED_METHODS,
    auroc,
    grade,
    markdown_table,
    pessimistic_ranking,
    regressions,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

RECORDED = json.loads((Path(__file__).parent / "recorded_grades.json").read_text())


def test_recorded_table_covers_the_suite():
    assert set(RECORDED) == set(PLANTED)
    for by_method in RECORDED.values():
        assert set(by_method) == set(GRADED_METHODS)


def test_auroc_counts_unresolved_ties_as_half():
    labels = ["L0H0", "L0H1", "L0H2", "MLP0"]
    truth = {"L0H0", "MLP0"}
    assert auroc({"L0H0": 2.0, "MLP0": 3.0, "L0H1": 1.0}, truth, labels) == 1.0
    # L0H0 and the decoy L0H2 differ by less than 0.1% of the largest score: a tie.
    assert auroc({"L0H0": 1.0001, "MLP0": 3.0, "L0H2": 1.0}, truth, labels) == pytest.approx(0.875)
    ranking = pessimistic_ranking({"L0H0": 1.0001, "MLP0": 3.0, "L0H2": 1.0}, truth, labels)
    assert ranking == ["MLP0", "L0H2", "L0H0", "L0H1"]


def test_regressions_name_every_drop():
    table = pd.DataFrame([{"model": "and", "method": "patching", "auroc": 0.9, "cpr": 0.35, "cmd": 0.7,
                           "f_at_truth": 1.0, "exact": None},
                          {"model": "and", "method": "circuit_topk", "auroc": 1.0, "cpr": 0.35, "cmd": 0.65,
                           "f_at_truth": 1.0, "exact": False}])
    recorded = {"and": {"patching": {"auroc": 1.0, "cpr": 0.34, "cmd": 0.65, "f_at_truth": 1.0},
                        "circuit_topk": {"auroc": 1.0, "cpr": 0.35, "cmd": 0.65, "f_at_truth": 1.0, "exact": True}}}
    lines = regressions(table, recorded)
    assert len(lines) == 3
    assert any("auroc" in x for x in lines) and any("cmd" in x for x in lines)
    assert any("no longer exactly" in x for x in lines)
    assert "| and | patching | 0.900 |" in markdown_table(table)
    with pytest.raises(ConfigError):
        grade(["and"], ["magic"])


def _check(names, methods):
    table = grade(names, methods)
    assert regressions(table, RECORDED) == []
    return table


def test_grades_hold_on_the_one_layer_models():
    table = _check(["decoy", "backup"], ["patching", "attribution", "dla", "circuit_topk"])
    # What the suite is for: the methods that see only direct effects or gradients miss what
    # exact patching finds.
    by = {(r.model, r.method): r for r in table.itertuples()}
    assert by["backup", "patching"].auroc == 1.0 and by["backup", "attribution"].auroc < 0.8
    assert by["decoy", "dla"].f_at_truth < 0.5 < by["decoy", "patching"].f_at_truth


@pytest.mark.slow
def test_no_grade_below_the_recorded_one():
    _check(list(PLANTED), list(GRADED_METHODS))
