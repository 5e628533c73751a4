"""Control tasks for probes (Hewitt & Liang 2019): what a probe could memorise.

Each input *type* gets a fixed label drawn from the target's empirical distribution, and a
probe of the same kind is fitted to those labels; ``selectivity = score - control``. The type
is, by default, the smallest set of operand digits the target is a function of
(:func:`control_columns`), or the token at each position (``control_by="token"``).
:func:`~arithinterp.methods.probe_sweep.fit_probes` plans and fits them with these helpers.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np

from arithinterp.methods.probes import LinearProbe, ProbeError, score_predictions
from arithinterp.tasks import PromptSet

__all__ = ["ControlBy", "control_by_option", "control_columns", "control_labels", "control_plan", "fit_control",
           "fit_type_control", "job_types", "type_control_labels", "type_ids"]

ControlBy = Literal["auto", "operands", "token"]


def control_labels(y: np.ndarray, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``control_by="token"``: each token id gets one label drawn from y, shared by positions.

    ``tokens`` is ``[prompt, pos]``; returns ``[pos, prompt]``.
    """
    table = rng.choice(y, size=int(tokens.max()) + 1)
    return table[tokens].T


_DIGIT_COLUMN = re.compile(r"^[ab]_digit_\d+$")
_MIN_PER_TYPE = 4  # a type must recur this often on average, or its label cannot be memorised


def control_columns(frame, y: np.ndarray, *, max_size: int = 3) -> list[str]:
    """The operand digits a target is a function of: the input *type* of its control task.

    Searches subsets of the operand digit columns (``a_digit_i``, ``b_digit_j``), smallest
    first, for one on which ``y`` is a deterministic function and whose value tuples recur
    (at most ``len(y) / 4`` distinct tuples); ties go to fewer distinct tuples. Carry bit
    ``SC_2`` of an addition gives ``["a_digit_2", "b_digit_2"]``; a target no small subset
    determines (a cascading carry, the answer) gives ``["operand_a", "operand_b"]``.
    """
    digits = [c for c in frame.columns if _DIGIT_COLUMN.match(str(c))]
    codes = {c: frame[c].to_numpy().astype(np.int64) for c in digits}
    _, y_code = np.unique(y, return_inverse=True)
    for size in range(1, max_size + 1):
        found = []
        for cols in itertools.combinations(digits, size):
            key = np.zeros(len(y), dtype=np.int64)
            for c in cols:
                key = key * 10 + codes[c]
            types, inverse = np.unique(key, return_inverse=True)
            if len(types) * _MIN_PER_TYPE > len(y):
                continue
            first = np.zeros(len(types), dtype=np.int64)
            first[inverse[::-1]] = y_code[::-1]  # one label per type (any occurrence)
            if np.array_equal(first[inverse], y_code):
                found.append((len(types), list(cols)))
        if found:
            return min(found, key=lambda f: f[0])[1]
    return [c for c in ("operand_a", "operand_b") if c in frame.columns]


def type_ids(frame, columns: Sequence[str]) -> np.ndarray:
    """One integer per prompt for the tuple of values in ``columns``."""
    if not columns:
        raise ProbeError("the control task needs at least one column to define input types")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ProbeError(f"control columns {missing} are not columns of the prompt set; "
                         f"columns: {list(frame.columns)}")
    values = np.stack([frame[c].to_numpy() for c in columns], axis=1)
    return np.unique(values, axis=0, return_inverse=True)[1].reshape(-1)


def type_control_labels(y: np.ndarray, types: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hewitt & Liang's control task: each input type gets a fixed label drawn from ``y``'s
    empirical distribution; every prompt of that type carries it. ``[prompt]``."""
    return rng.choice(y, size=int(types.max()) + 1)[types]


def control_by_option(control_by) -> str | dict | list:
    """``control_by`` as recorded in ``meta.options`` (plain JSON types)."""
    if isinstance(control_by, str):
        return control_by
    return dict(control_by) if isinstance(control_by, Mapping) else list(control_by)


def control_plan(prompts: PromptSet, ys: dict[str, np.ndarray], control_by) -> dict:
    """Per target, the frame columns whose value tuple is the control task's input type
    (or ``"token"``)."""
    if isinstance(control_by, str):
        if control_by not in get_args(ControlBy):
            raise ProbeError(f"control_by={control_by!r}; valid: {list(get_args(ControlBy))}, "
                             "a list of columns, or a dict target -> columns")
        if control_by == "auto":
            return {name: control_columns(prompts.frame, y) for name, y in ys.items()}
        if control_by == "operands":
            return {name: ["operand_a", "operand_b"] for name in ys}
        return {name: "token" for name in ys}
    if isinstance(control_by, Mapping):
        unknown = set(control_by) - set(ys)
        if unknown:
            raise ProbeError(f"control_by names targets {sorted(unknown)} that are not probed: {list(ys)}")
        plan = {name: control_columns(prompts.frame, y) for name, y in ys.items()}
        plan.update({name: list(cols) for name, cols in control_by.items()})
    else:
        plan = {name: list(control_by) for name in ys}
    for cols in plan.values():
        type_ids(prompts.frame, cols)  # unknown columns fail here, before any forward pass
    return plan


def job_types(prompts: PromptSet, control_cols: dict, name: str, period: int | None) -> np.ndarray | None:
    """The control task's input type per prompt for one job (``None``: by token, or no control)."""
    cols = control_cols.get(name.split(" mod ")[0] if period else name)
    return None if cols is None or cols == "token" else type_ids(prompts.frame, cols)


def fit_type_control(X_train, X_test, y_ctrl, train, test, *, kind, period, l2,
                     fitter=LinearProbe) -> np.ndarray:
    """Score of the control task (labels ``[prompt]``) at every (site, pos)."""
    score_kind = "ridge" if kind == "ridge" else "accuracy"
    y_eval = np.mod(y_ctrl, period) if kind == "circular" else y_ctrl
    if len(np.unique(y_eval[train])) < 2:  # one label: the control is trivially "learned"
        const = np.full(len(test), y_eval[train][0])
        return np.full(X_train.shape[:2], float(score_predictions(const, y_eval[test], score_kind)))
    probe = fitter(kind, l2=l2, period=period).fit(X_train, y_ctrl[train])
    pred = probe.predict(X_test)
    return score_predictions(pred, np.broadcast_to(y_eval[test], pred.shape), score_kind)


def fit_control(X_train, X_test, y_ctrl, train, test, *, kind, period, l2, fitter=LinearProbe) -> np.ndarray:
    """Fit the control task; positions whose control labels are constant score 1 (trivial)."""
    score_kind = "ridge" if kind == "ridge" else "accuracy"
    n_sites, n_pos = X_train.shape[:2]
    out = np.ones((n_sites, n_pos))
    y_eval = np.mod(y_ctrl, period) if kind == "circular" else y_ctrl
    varied = [p for p in range(n_pos) if len(np.unique(y_eval[p, train])) > 1]
    if not varied:
        return out
    # positions differ in their control labels, so the fit is batched over (pos, site)
    y_fit = np.broadcast_to(y_ctrl[varied][:, None, train], (len(varied), n_sites, len(train)))
    Xtr = X_train[:, varied].transpose(0, 1)
    probe = fitter(kind, l2=l2, period=period).fit(Xtr, y_fit)
    pred = probe.predict(X_test[:, varied].transpose(0, 1))
    truth = np.broadcast_to(y_eval[varied][:, None, test], pred.shape)
    out[:, varied] = score_predictions(pred, truth, score_kind).T
    return out
