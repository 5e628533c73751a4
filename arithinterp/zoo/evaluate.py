"""Accuracy of zoo models, measured through the plain HF forward.

Exact match is computed teacher-forced: every answer token is the argmax
given the true preceding tokens. This equals greedy decoding for exact match
(a sequence is all-correct under one iff under the other); per-digit accuracy
is the teacher-forced accuracy of each answer position.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from arithinterp.zoo.data import (
    BORROW_CLASS_NAMES,
    CLASS_NAMES,
    TaskFormat,
    borrow_cascade_operands,
    borrow_class,
    cascade_operands,
    complexity_class,
    ops_tok_pairs,
    sample_uniform_operands,
    split_pairs,
)

__all__ = [
    "answer_loss",
    "final_metrics",
    "pair_sequences",
    "score",
    "score_pairs",
    "task_pairs",
    "uniform_problems",
]


def answer_loss(
    logits: torch.Tensor, answers: torch.Tensor, fmt: TaskFormat, *, float64: bool = False
) -> torch.Tensor:
    """Mean cross-entropy of answer logits ``(B, n_ans, V)`` against ``(B, n_ans)`` ids.

    For mod-p the loss is over the first p logits only (Nanda et al.).
    """
    if fmt.kind == "modadd":
        logits = logits[..., : fmt.p]
    if float64:
        logits = logits.double()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), answers.reshape(-1))


@torch.no_grad()
def score(model, fmt: TaskFormat, seqs: np.ndarray, *, batch_size: int = 8192) -> dict[str, Any]:
    """Exact match, per-answer-token accuracy and loss on full sequences ``(N, L)``."""
    model.eval()
    correct_parts, losses = [], []
    pos = fmt.answer_positions
    for start in range(0, len(seqs), batch_size):
        chunk = torch.from_numpy(seqs[start : start + batch_size])
        logits = model(input_ids=chunk[:, :-1]).logits[:, pos]
        answers = chunk[:, fmt.prompt_len :]
        vocab = logits[..., : fmt.p] if fmt.kind == "modadd" else logits
        correct_parts.append((vocab.argmax(-1) == answers).numpy())
        losses.append(answer_loss(logits, answers, fmt, float64=True).item() * len(chunk))
    correct = np.concatenate(correct_parts)
    return {
        "n": int(len(seqs)),
        "exact_match": float(correct.all(axis=1).mean()),
        "per_token": [float(x) for x in correct.mean(axis=0)],
        "loss": float(sum(losses) / len(seqs)),
        "_correct": correct,
    }


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def task_pairs(fmt: TaskFormat, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded train/test split of a finite-table task (modadd, add_tok, ops_tok).

    Rows are ``(a, b)``, or ``(a, b, op)`` for ``ops_tok``, which is split per
    operator (each operator keeps ``train_fraction`` of its own problems).
    """
    if fmt.kind == "ops_tok":
        train, test = [], []
        for op, pairs in enumerate(ops_tok_pairs(fmt.max_operand, fmt.n_numbers - 1)):
            order = np.random.default_rng([seed, op]).permutation(len(pairs))
            k = int(train_fraction * len(pairs))
            rows = np.concatenate([pairs[order], np.full((len(pairs), 1), op)], axis=1)
            train.append(rows[:k])
            test.append(rows[k:])
        return np.concatenate(train), np.concatenate(test)
    n_values = fmt.p if fmt.kind == "modadd" else (fmt.n_numbers + 1) // 2
    return split_pairs(n_values, train_fraction, seed)


def pair_sequences(fmt: TaskFormat, pairs: np.ndarray) -> np.ndarray:
    """Full sequences of ``(a, b)`` or ``(a, b, op)`` rows."""
    op = pairs[:, 2] if pairs.shape[1] > 2 else None
    return fmt.sequences(pairs[:, 0], pairs[:, 1], op)


def score_pairs(model, fmt: TaskFormat, pairs: np.ndarray) -> dict[str, Any]:
    return score(model, fmt, pair_sequences(fmt, pairs))


def uniform_problems(rng: np.random.Generator, fmt: TaskFormat, n: int) -> np.ndarray:
    """``n`` problems of a digit task with uniform operands (and a uniform operator),
    as ``(a, b, op)`` rows."""
    a, b = sample_uniform_operands(rng, n, fmt.n_digits)
    op = rng.integers(0, len(fmt.ops), n) if len(fmt.ops) > 1 else np.zeros(n, np.int64)
    return np.stack([a, b, op], axis=1)


def _by_operator(model, fmt: TaskFormat, pairs: np.ndarray) -> dict[str, Any]:
    out = {}
    for op, name in enumerate(fmt.ops):
        r = score_pairs(model, fmt, pairs[pairs[:, 2] == op])
        out[name] = {"n": r["n"], "accuracy": r["exact_match"], "loss": r["loss"]}
    return out


def _finite_metrics(model, recipe, fmt: TaskFormat) -> dict[str, Any]:
    train, test = task_pairs(fmt, recipe.task.train_fraction, recipe.seed)
    tr, te = score_pairs(model, fmt, train), score_pairs(model, fmt, test)
    out: dict[str, Any] = {
        "train": {"n": tr["n"], "accuracy": tr["exact_match"], "loss": tr["loss"]},
        "test": {"n": te["n"], "accuracy": te["exact_match"], "loss": te["loss"]},
        "headline": {
            "metric": "test_accuracy",
            "value": te["exact_match"],
            "n": te["n"],
            "sample": "held-out pairs (the seeded test split)",
        },
    }
    if fmt.kind == "ops_tok":
        out["by_operator"] = {"train": _by_operator(model, fmt, train),
                              "test": _by_operator(model, fmt, test)}
    return out


def _class_tables(model, fmt: TaskFormat, problems: np.ndarray, correct, rng, n_per_class: int,
                  *, kind: str) -> dict[str, Any]:
    """Exact match per carry (``kind="add"``) or borrow (``"sub"``) class: as the classes
    occur in ``problems``, and on balanced constructed samples."""
    n = fmt.n_digits
    a, b = problems[:, 0], problems[:, 1]
    names, classify, construct = (
        (CLASS_NAMES, complexity_class, cascade_operands) if kind == "add"
        else (BORROW_CLASS_NAMES, borrow_class, borrow_cascade_operands)
    )
    cls = classify(a, b, n)
    op_index = fmt.ops.index(kind)
    uniform = {
        names[c]: {
            "n": int((cls == c).sum()),
            "exact_match": float(correct[cls == c].all(axis=1).mean()) if (cls == c).any() else None,
        }
        for c in range(6)
    }
    balanced = {}
    # S_c needs c digits (a carry may leave the top column); B_c needs c + 1 (a borrow may not)
    top = n + 1 if kind == "add" else n
    for c in range(min(6, top)):
        ca, cb = construct(rng, n_per_class, n, c)
        r = score(model, fmt, fmt.sequences(ca, cb, np.full(len(ca), op_index)))
        balanced[names[c]] = {"n": r["n"], "exact_match": r["exact_match"]}
    return {"uniform_by_class": uniform, "by_class": balanced}


def final_metrics(model, recipe, fmt: TaskFormat, *, seed: int) -> dict[str, Any]:
    """Everything the model card reports. ``seed`` seeds the fresh evaluation data."""
    rng = np.random.default_rng([seed, 7919])
    ev = recipe.eval
    if fmt.kind in ("modadd", "add_tok", "ops_tok"):
        return _finite_metrics(model, recipe, fmt)
    out: dict[str, Any] = {}
    n = fmt.n_digits
    problems = uniform_problems(rng, fmt, ev.n_final)
    res = score(model, fmt, pair_sequences(fmt, problems))
    correct = res["_correct"]
    out["uniform"] = _public(res) | {"answer_order": "MSD first" if fmt.msd_first else "LSD first"}
    out["headline"] = {
        "metric": "exact_match",
        "value": res["exact_match"],
        "n": res["n"],
        "sample": f"uniform random {n}-digit operands"
        + (f", operator uniform over {' '.join(fmt.ops)}" if len(fmt.ops) > 1 else ""),
    }
    if len(fmt.ops) > 1:
        out["by_operator"] = {
            name: {"n": int((problems[:, 2] == op).sum()),
                   "exact_match": float(correct[problems[:, 2] == op].all(axis=1).mean())}
            for op, name in enumerate(fmt.ops)
        }
    for kind, key in (("add", "carry"), ("sub", "borrow")):
        if kind in fmt.ops:
            rows = problems[:, 2] == fmt.ops.index(kind)
            tables = _class_tables(model, fmt, problems[rows], correct[rows], rng, ev.n_per_class,
                                   kind=kind)
            if len(fmt.ops) == 1:
                out.update(tables)
            else:
                out[f"{key}_classes"] = tables
    return out
