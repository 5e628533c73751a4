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
    CLASS_NAMES,
    TaskFormat,
    cascade_operands,
    complexity_class,
    sample_uniform_operands,
    split_pairs,
)

__all__ = ["answer_loss", "final_metrics", "score", "score_pairs", "task_pairs"]


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
    """The seeded train/test split of a finite-table task (modadd, add_tok)."""
    n_values = fmt.p if fmt.kind == "modadd" else (fmt.n_numbers + 1) // 2
    return split_pairs(n_values, train_fraction, seed)


def score_pairs(model, fmt: TaskFormat, pairs: np.ndarray) -> dict[str, Any]:
    return score(model, fmt, fmt.sequences(pairs[:, 0], pairs[:, 1]))


def final_metrics(model, recipe, fmt: TaskFormat, *, seed: int) -> dict[str, Any]:
    """Everything the model card reports. ``seed`` seeds the fresh evaluation data."""
    rng = np.random.default_rng([seed, 7919])
    ev = recipe.eval
    out: dict[str, Any] = {}
    if fmt.kind in ("modadd", "add_tok"):
        train, test = task_pairs(fmt, recipe.task.train_fraction, recipe.seed)
        tr, te = score_pairs(model, fmt, train), score_pairs(model, fmt, test)
        out["train"] = {"n": tr["n"], "accuracy": tr["exact_match"], "loss": tr["loss"]}
        out["test"] = {"n": te["n"], "accuracy": te["exact_match"], "loss": te["loss"]}
        out["headline"] = {
            "metric": "test_accuracy",
            "value": te["exact_match"],
            "n": te["n"],
            "sample": "held-out pairs (the seeded test split)",
        }
        return out
    n = fmt.n_digits
    a, b = sample_uniform_operands(rng, ev.n_final, n)
    res = score(model, fmt, fmt.sequences(a, b))
    correct = res["_correct"]
    order = "MSD first" if fmt.kind == "add" else "LSD first"
    out["uniform"] = _public(res) | {"answer_order": order}
    out["headline"] = {
        "metric": "exact_match",
        "value": res["exact_match"],
        "n": res["n"],
        "sample": f"uniform random {n}-digit operands",
    }
    if fmt.kind == "add":
        cls = complexity_class(a, b, n)
        out["uniform_by_class"] = {
            CLASS_NAMES[c]: {
                "n": int((cls == c).sum()),
                "exact_match": float(correct[cls == c].all(axis=1).mean())
                if (cls == c).any()
                else None,
            }
            for c in range(6)
        }
        balanced = {}
        for c in range(min(6, n + 1)):  # class S_c needs a cascade of c - 1 columns over a carry: c digits
            ca, cb = cascade_operands(rng, ev.n_per_class, n, c)
            r = score(model, fmt, fmt.sequences(ca, cb))
            balanced[CLASS_NAMES[c]] = {"n": r["n"], "exact_match": r["exact_match"]}
        out["by_class"] = balanced
    return out
