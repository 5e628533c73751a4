"""Borrow probes against known answers: a planted borrow direction, and the zoo subtraction model.

``borrow_j`` (``arithinterp.tasks.arithmetic``) is the borrow out of column ``j`` of
``max(a, b) - min(a, b)``, i.e. the borrow *into* column ``j + 1``: a function of the operands
that answer digit ``j + 1`` needs. A model that writes every digit right must have it, at the
latest, where it predicts that digit (linearly or not: see the zoo test); a stream that has not
seen both operands cannot.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arithinterp.errors import ModelLoadError
from arithinterp.methods import fit_probes
from arithinterp.methods.probe_controls import type_ids
from arithinterp.methods.probe_sweep import _fit_jobs, _probe_jobs, split_prompts
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate
from arithinterp.zoo import zoo_path

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

MODEL = "sub-5d"


def _planted_streams(prompts, borrow_cols, rng, d=48, scale=2.0, noise=0.5):
    """Two synthetic residual "sites" per prompt, ``[site, pos=1, prompt, d]``.

    ``after``: random embeddings of every operand digit, plus ``scale`` along one unit
    direction per borrow bit, with the embeddings and the noise projected off those
    directions, so each direction carries exactly its bit and nothing else does.
    ``before``: the embedding of the minuend's top digit only (what a stream at the first
    operand token has seen), plus noise: no borrow direction.
    """
    frame = prompts.frame
    w = prompts.spec.operand_width
    dirs, _ = np.linalg.qr(rng.normal(size=(d, len(borrow_cols))))  # orthonormal, [d, k]
    off = np.eye(d) - dirs @ dirs.T
    digits = np.stack([frame[f"{x}_digit_{i}"] for x in "ab" for i in range(w)], 1)
    tables = rng.normal(size=(2 * w, 10, d))
    after = sum(tables[c][digits[:, c]] for c in range(2 * w)) + noise * rng.normal(size=(len(frame), d))
    after = after @ off + scale * (frame[borrow_cols].to_numpy(float) - 0.5) @ dirs.T
    before = tables[w - 1][digits[:, w - 1]] + noise * rng.normal(size=(len(frame), d))
    return np.stack([after, before])[:, None], dirs


def test_a_planted_borrow_direction_is_recovered_exactly():
    """Known by construction: along its direction, the "after" stream is exactly the borrow bit,
    so a linear probe decodes it at 1.000 held out, and its weights point along that direction
    (cosine > 0.99, the embeddings being projected off it). The Hewitt & Liang control (a random
    label per operand pair: every prompt its own type) cannot be learned, nor can labels shuffled
    over prompts: both stay at chance. The "before" stream, which has seen only the minuend's top
    digit, holds nothing about the lower columns' borrows: chance too (within 0.06 of the better
    constant guess; 400 held-out prompts, sd of an accuracy ~0.025; measured at most +0.03)."""
    rng = np.random.default_rng(3)
    prompts = generate(TaskSpec(operation="sub", digits=5, format="fixed", n=1600, seed=3))
    cols = ["borrow_0", "borrow_1", "borrow_2", "borrow_3"]
    X, dirs = _planted_streams(prompts, cols, rng)
    train, test = split_prompts(prompts, test_fraction=0.25, split="random", seed=0)
    ys = {c: prompts.frame[c].to_numpy() for c in cols}
    ys |= {f"{c} shuffled": rng.permutation(ys[c]) for c in cols}
    jobs = _probe_jobs(ys, "auto", ())
    types = [type_ids(prompts.frame, ["operand_a", "operand_b"])] * len(jobs)
    tokens = np.zeros((len(prompts), 1), dtype=np.int64)
    Xt = torch.from_numpy(X).double()
    rows = _fit_jobs(jobs, types, train, test, tokens, Xt[:, :, train], Xt[:, :, test],
                     l2=1e-3, control=True, n_boot=0, seed=0)
    for (name, _, _, _), row in zip(jobs, rows):
        after, before = row["score"][0, 0], row["score"][1, 0]
        chance = max(row["majority"], 1 - row["majority"])
        print(f"{name:20s} after {after:.3f} before {before:.3f} control {row['control'][0, 0]:.3f} "
              f"chance {chance:.3f}")
        assert before <= chance + 0.06
        assert row["control"][0, 0] <= chance + 0.06
        if name.endswith("shuffled"):
            assert after <= chance + 0.06
            continue
        assert after == 1.0
        coef = row["probe"].coef_[0, 0, 0]
        k = cols.index(name)
        assert abs(coef @ dirs[:, k]) / np.linalg.norm(coef) > 0.99


# ---- the zoo subtraction model ------------------------------------------------------------


@pytest.fixture(scope="module")
def sub5():
    try:
        zoo_path(MODEL)
    except ModelLoadError:
        pytest.skip(f"zoo:{MODEL} is not shipped yet (issue 14); the borrow-probe known answer runs "
                    "once it is")
    return load_model(f"zoo:{MODEL}")


@pytest.fixture(scope="module")
def sub5_prompts(sub5):
    return generate(model=sub5, operand_range=(0, 99999), n=1200, seed=1)


def _digit_position(prompts, i: int) -> int:
    """The position predicting answer digit ``i`` (place ``10**i``): ``12345-67890=`` is 12 tokens,
    the sign is predicted at "=" (11), then the magnitude's digits most significant first."""
    return prompts.spec.operand_width * 2 + 1 + prompts.spec.answer_width - i


def test_the_borrow_into_each_column_is_decodable_where_its_digit_is_predicted(sub5, sub5_prompts):
    """Known answer on zoo:sub-5d (``12345-67890=-55545``; >= 99.9% exact on its card). Answer
    digit ``i`` (i = 1..4, predicted at position 16 - i) needs the borrow into column ``i``. The
    model holds it in prompt order: ``ab_borrow_{i-1}``, the borrow of ``a - b`` column by column
    whatever the sign, is decodable there after layer-1 attention. ``borrow_{i-1}``, the borrow of
    ``max - min`` that the magnitude's digit uses, is ``ab_borrow`` exclusive-or the sign (lower
    columns equal apart), which a stream holding those two linearly need not hold linearly: it
    becomes decodable only in the last layer, and the lowest two columns' only in part. The
    Hewitt & Liang control (a random label per operand pair) and labels shuffled over prompts
    stay at chance at the best site; and at position 0, which has seen the minuend's top digit
    only, no site decodes either borrow. 1200 prompts (operands 0..99999), 900 train / 300 held
    out.

    Measured on the shipped model (held-out accuracy at the best site; control and shuffled
    there; position 0's best site; chance = the better constant guess):

        into column  pos  ab_borrow: best        borrow: best          control  shuffled  pos 0
        1            15   L1 mid 1.000           L2 post 0.903         <= 0.53  <= 0.53   <= chance
        2            14   L1 mid 0.99 (L2 mid 1) L2 post 0.930         <= 0.51  <= 0.54   +0.004
        3            13   L1 mid 1.000           L2 pre 0.990          <= 0.47  <= 0.50   <= chance
        4            12   L1 mid 1.000           L2 pre 1.000          <= 0.50  <= 0.49   <= chance

    (before layer-1 attention both are at 0.41-0.65). Over prompt seeds 1-3: ``ab_borrow`` >= 0.997,
    ``borrow`` >= 0.893, and control, shuffled and position 0 at most 0.04 above chance.

    Thresholds, from these with margin: ``ab_borrow`` >= 0.95 at the best site, ``borrow`` >= 0.85;
    control, shuffled and position 0 <= chance + 0.08 (300 held out: sd ~0.029, and position 0 is
    read at the best of 7 sites).
    """
    rng = np.random.default_rng(0)
    frame = sub5_prompts.frame
    ys = {}
    for i in range(1, 5):
        for col in (f"ab_borrow_{i - 1}", f"borrow_{i - 1}"):
            ys[col] = frame[col].to_numpy()
            ys[f"{col} shuffled"] = rng.permutation(ys[col])
    positions = [0] + [_digit_position(sub5_prompts, i) for i in range(1, 5)]
    res = fit_probes(sub5, sub5_prompts, ys, positions=positions, n_boot=0, progress=False)
    assert res.meta.extra["control_columns"]["borrow_0"] == ["operand_a", "operand_b"]
    for i in range(1, 5):
        pos = _digit_position(sub5_prompts, i)
        for col, floor in ((f"ab_borrow_{i - 1}", 0.95), (f"borrow_{i - 1}", 0.85)):
            majority = float(res.extras["majority"].sel(target=col))
            chance = max(majority, 1 - majority)
            cell = res.values.sel(target=col, pos=pos)
            best = str(cell.idxmax("site").values)
            control = float(res.extras["control"].sel(target=col, pos=pos, site=best))
            shuffled = float(res.values.sel(target=f"{col} shuffled", pos=pos, site=best))
            at0 = float(res.values.sel(target=col, pos=0).max())
            print(f"{col:12s} pos {pos}: best {best} {float(cell.max()):.3f} control {control:.3f} "
                  f"shuffled {shuffled:.3f} pos0 {at0:.3f} chance {chance:.3f} | "
                  + " ".join(f"{v:.2f}" for v in cell.values))
            assert float(cell.max()) >= floor
            assert control <= chance + 0.08
            assert shuffled <= chance + 0.08
            assert at0 <= chance + 0.08
