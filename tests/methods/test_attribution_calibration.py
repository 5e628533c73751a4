"""Calibration of attribution against exact patching on the shipped zoo must not regress.

The floors are the numbers measured when the recommended method was chosen
(``docs/methods/attribution.md``, ``python benchmarks/attribution.py``): the report's
pairs (32 prompts of each model's own task, ``random`` pairs, seed 0), the exact
head x position sweep, and the recommended (method, freeze_norm) of the report.
"""

from __future__ import annotations

import numpy as np
import pytest

from arithinterp.methods.attribution_calibration import RECOMMENDED, calibrate_attribution
from arithinterp.models import load_model
from arithinterp.tasks import generate, make_pairs, tokenize

#: model -> (spearman, pearson, top-10 overlap) of RECOMMENDED, as measured.
MEASURED = {
    "add-5d": (0.583, 0.966, 0.8),
    "add-5d-1L": (0.731, 0.992, 0.9),
    "add-2d-tok": (0.985, 0.995, 1.0),
    "modadd-113": (1.000, 0.999, 1.0),
    "mul-3d": (0.745, 0.911, 0.7),
}
#: Plain AtP on the same sweeps, for the "better than AtP" check: (spearman, pearson).
PLAIN_ATP = {"add-5d": (0.148, -0.777), "add-5d-1L": (-0.134, -0.229), "mul-3d": (0.414, 0.138)}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_intra_op_thread):
    yield


#: add-2d-tok takes ~25 s here (its fast-engine sweep of single-token answers), so it runs with -m slow.
ZOO = [pytest.param(n, marks=pytest.mark.slow) if n == "add-2d-tok" else n for n in sorted(MEASURED)]


@pytest.mark.parametrize("name", ZOO)
def test_calibration_on_the_zoo_does_not_regress(name):
    model = load_model(f"zoo:{name}")
    prompts = generate(model=model, n=32, seed=0)
    pairs = make_pairs(prompts, "random", seed=0, on_impossible="drop")
    answer = "single" if tokenize(pairs.clean, model.tokenizer, answer="multi").answer_len == 1 else "multi"
    method, freeze = RECOMMENDED
    methods = [method, "atp"] if name in PLAIN_ATP else [method]
    frame = calibrate_attribution(model, pairs, answer=answer, methods=methods, freeze_norms=[freeze, False],
                                  repeats=0)
    row = frame[(frame.method == method) & (frame.freeze_norm == freeze)].iloc[0]
    spearman, pearson, top10 = MEASURED[name]
    assert row.spearman >= spearman - 0.02
    assert row.pearson >= pearson - 0.02
    assert row.top10 >= top10 - 1e-9
    assert 0.5 < row.magnitude_ratio < 2.0  # the right size, where plain AtP is often 5-10x too small
    assert np.isnan(row.cost_fwd_eq) and row.passes_fwd_eq > 0
    if name in PLAIN_ATP:
        atp = frame[(frame.method == "atp") & (~frame.freeze_norm)].iloc[0]
        np.testing.assert_allclose([atp.spearman, atp.pearson], PLAIN_ATP[name], atol=0.02)
        assert row.pearson > atp.pearson + 0.5
