"""Calibration of attribution methods against the exact patching sweep.

:func:`calibrate_attribution` runs the exact sweep once and every requested
(method, freeze_norm) of :func:`~arithinterp.methods.attribution.attribution_patch`
on the same pairs, and scores each estimate against the exact effects:
Spearman and Pearson correlation and top-k overlap (:func:`compare_with_exact`; also its
``spearman_major`` over the cells with at least 1% of the largest exact effect),
the ratio of magnitudes ``‖estimate‖ / ‖exact‖`` over the cells (1 = the right
size; AtP through a LayerNorm often gives far less), and the cost in forward-pass
equivalents: the method's wall time divided by the time of one plain forward pass
of the same batch (both the best of a few repeats, measured side by side), and the
count of its passes (``passes_fwd_eq``: a forward pass 1, a forward and backward pass 3),
which does not depend on the machine's load or on per-pass overhead.

:data:`~arithinterp.methods.attribution_rules.RECOMMENDED` is the method the report uses for its ``atp`` column and
``agree_atp``: the best calibrated on the shipped zoo (``docs/methods/attribution.md``
has the table; ``tests/methods/test_attribution_calibration.py`` keeps it there).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from arithinterp.errors import ConfigError
from arithinterp.methods.attribution import _effect, attribution_patch, compare_with_exact
from arithinterp.methods.attribution_rules import METHODS, RECOMMENDED, RECOMMENDED_IG_STEPS
from arithinterp.methods.metrics import PairBatch, tokenize_pairs
from arithinterp.methods.patching import patch_activations
from arithinterp.models import Model
from arithinterp.tasks import PromptPairs

__all__ = ["CALIBRATION_COLUMNS", "RECOMMENDED", "calibrate_attribution", "forward_time"]


CALIBRATION_COLUMNS = ("method", "freeze_norm", "spearman", "pearson", "top10", "magnitude_ratio",
                       "cost_fwd_eq", "passes_fwd_eq", "seconds", "spearman_major", "n_major")

#: A backward pass costs about two forward passes (the usual FLOP count).
BACKWARD_FWD_EQ = 2.0


def _best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


@contextmanager
def counted_passes() -> Iterator[list[float]]:
    """Count the forward passes every :class:`Model` runs in the block, in forward-pass
    equivalents: a pass without gradient is 1, one with a backward pass 1 + :data:`BACKWARD_FWD_EQ`."""
    total = [0.0]
    run = Model._run

    def counting(self, *args, **kwargs):
        total[0] += 1.0 + (BACKWARD_FWD_EQ if kwargs.get("grad") else 0.0)
        return run(self, *args, **kwargs)

    Model._run = counting
    try:
        yield total
    finally:
        Model._run = run


def forward_time(model: Model, batch: PairBatch, repeats: int = 5) -> float:
    """Seconds of one plain forward pass (no gradient, no hooks) of the batch's clean prompts."""
    return _best_time(lambda: model.logits(batch.clean), repeats)[0]


def calibrate_attribution(
    model: Model,
    pairs: PromptPairs | PairBatch,
    *,
    kind: str = "attn_head",
    per_position: bool = True,
    methods: Sequence[str] = METHODS,
    freeze_norms: Sequence[bool] = (False, True),
    answer: str = "multi",
    ig_steps: int = RECOMMENDED_IG_STEPS,
    k: int = 10,
    repeats: int = 2,
) -> pd.DataFrame:
    """Score each (method, freeze_norm) against the exact sweep of the same pairs.

    Returns one row per (method, freeze_norm) with the columns
    :data:`CALIBRATION_COLUMNS`; ``attrs["exact"]`` holds the exact sweep (fast engine),
    ``attrs["exact_seconds"]`` its time and ``attrs["forward_seconds"]`` the forward pass
    the costs are counted against. ``repeats=0`` skips the timing (``cost_fwd_eq`` NaN).
    """
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"methods {bad or '(none)'}: valid are {', '.join(METHODS)}")
    batch = pairs if isinstance(pairs, PairBatch) else tokenize_pairs(pairs, model.tokenizer, answer=answer)
    common = dict(kind=kind, per_position=per_position, answer=answer, batch_size=max(len(batch.clean), 1),
                  n_boot=1, progress=False)
    exact_seconds, exact = _best_time(partial(patch_activations, model, batch, engine="fast", **common), 1)
    forwards = []
    ex = np.asarray(_effect(exact).values, dtype=float)
    rows = []
    for method in methods:
        for freeze in freeze_norms:
            run = partial(attribution_patch, model, batch, method=method, freeze_norm=freeze, ig_steps=ig_steps,
                          **common)
            with counted_passes() as passes:
                res = run()
            # The forward pass is timed beside each method, so both see the same load.
            forwards.append(forward_time(model, batch) if repeats else float("nan"))
            seconds = _best_time(run, repeats)[0] if repeats else float("nan")
            cmp = compare_with_exact(res, exact, k=k)
            est = np.asarray(res.effect.values, dtype=float)
            keep = np.isfinite(est) & np.isfinite(ex)
            norm = float(np.linalg.norm(ex[keep]))
            rows.append({"method": method, "freeze_norm": bool(freeze), "spearman": cmp["spearman"],
                         "pearson": cmp["pearson"], "top10": cmp["top_k_overlap"],
                         "magnitude_ratio": float(np.linalg.norm(est[keep])) / norm if norm else float("nan"),
                         "cost_fwd_eq": seconds / forwards[-1], "passes_fwd_eq": passes[0], "seconds": seconds,
                         "spearman_major": cmp["spearman_major"], "n_major": cmp["n_major"]})
    frame = pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))
    frame.attrs.update(exact=exact, forward_seconds=min(forwards), exact_seconds=exact_seconds)
    return frame
