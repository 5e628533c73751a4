"""Tokenized clean/corrupt pairs and the metrics causal methods score them with.

Convention for multi-token answers: both runs read their own prompt followed
by the **clean** answer (teacher forcing). A metric asks "how well does this
run produce the clean answer (against the corrupt one)?" at the answer
positions, so exact-match accuracy equals greedy decoding of the clean
answer. With one-token answers the sequence is the prompt alone and the
metric reads its last position.

A metric maps the logits at the answer positions ``[batch, answer, vocab]``
and the pair batch to one value per prompt ``[batch]``. Normalised variants
rescale the mean so that 0 is the unpatched corrupt run and 1 the unpatched
clean run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch

from arithinterp.errors import MethodError, TokenizationError
from arithinterp.tasks import PromptPairs, tokenize

AnswerMode = Literal["multi", "single"]
MetricName = Literal["logit_diff", "logprob", "prob", "accuracy"]
METRICS: tuple[str, ...] = get_args(MetricName)


@dataclass(frozen=True)
class PairBatch:
    """Clean and corrupt token sequences of equal length, with the answers they are scored on.

    ``clean`` / ``corrupt``: ``[n, pos]``; ``clean_answer`` / ``corrupt_answer``:
    ``[n, answer]`` token ids; ``answer_positions``: ``[answer]``, positions whose
    logits predict each answer token; ``str_tokens``: token strings of the first
    clean sequence; ``answer``: the answer mode it was tokenized with and
    ``dataset_hash``: the hash of the clean prompts (both set by
    :func:`tokenize_pairs`; ``None`` for a batch built by hand), so that a method
    given the batch records the same provenance as one given the pairs.
    """

    clean: torch.Tensor
    corrupt: torch.Tensor
    clean_answer: torch.Tensor
    corrupt_answer: torch.Tensor
    answer_positions: torch.Tensor
    str_tokens: tuple[str, ...]
    answer: AnswerMode | None = None
    dataset_hash: str | None = None

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean.shape[1])

    def slice(self, start: int, stop: int) -> PairBatch:
        """Pairs ``start:stop`` (the rows a batched forward pass reads)."""
        return replace(
            self, clean=self.clean[start:stop], corrupt=self.corrupt[start:stop],
            clean_answer=self.clean_answer[start:stop], corrupt_answer=self.corrupt_answer[start:stop],
        )

    def answer_token(self, index: int) -> PairBatch:
        """The same pairs scored on answer token ``index`` only (0 = the first token written)."""
        i = slice(index, index + 1)
        return replace(self, clean_answer=self.clean_answer[:, i], corrupt_answer=self.corrupt_answer[:, i],
                       answer_positions=self.answer_positions[i])


def tokenize_pairs(pairs: PromptPairs, tokenizer, *, answer: AnswerMode = "multi") -> PairBatch:
    """Tokenize pairs for patching; clean and corrupt must have the same token length.

    Raises :class:`TokenizationError` (before any forward pass) when lengths
    differ or, with ``answer="single"``, when an answer is not one token.
    """
    clean = tokenize(pairs.clean, tokenizer, answer=answer)
    corrupt = tokenize(pairs.corrupt, tokenizer, answer=answer)
    if clean.tokens.shape[1] != corrupt.tokens.shape[1] or clean.prompt_len != corrupt.prompt_len:
        raise TokenizationError(
            f"clean prompts tokenize to {clean.prompt_len} tokens and corrupt prompts to "
            f"{corrupt.prompt_len}; patching needs equal lengths (use a fixed-width format)"
        )
    if clean.answer_len != corrupt.answer_len:
        raise TokenizationError(
            f"clean answers have {clean.answer_len} tokens and corrupt answers "
            f"{corrupt.answer_len}; use a fixed answer width"
        )
    n_ans = clean.answer_len
    if answer == "single":
        keep = clean.prompt_len  # the prompt alone; its last position predicts the answer
    else:
        keep = clean.tokens.shape[1] - 1  # the last answer token is never read
    clean_seq = clean.tokens[:, :keep]
    corrupt_seq = torch.cat([corrupt.tokens[:, : clean.prompt_len], clean.tokens[:, clean.prompt_len:keep]], 1)
    return PairBatch(
        clean=clean_seq,
        corrupt=corrupt_seq,
        clean_answer=clean.answer_tokens,
        corrupt_answer=corrupt.answer_tokens,
        answer_positions=torch.arange(clean.prompt_len - 1, clean.prompt_len - 1 + n_ans),
        str_tokens=tuple(clean.str_tokens[:keep]),
        answer=answer,
        dataset_hash=pairs.clean.hash,
    )


MetricFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``fn(answer_logits [b, answer, vocab], clean_answer [b, answer], corrupt_answer [b, answer]) -> [b]``."""


def _gather(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return x.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def logit_diff(logits: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> torch.Tensor:
    """Sum over answer tokens of logit(clean token) − logit(corrupt token)."""
    return (_gather(logits, clean) - _gather(logits, corrupt)).sum(-1)


def logprob(logits: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> torch.Tensor:
    """Log-probability of the whole clean answer (teacher-forced)."""
    return _gather(torch.log_softmax(logits, -1), clean).sum(-1)


def prob(logits: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> torch.Tensor:
    """Probability of the whole clean answer (teacher-forced)."""
    return logprob(logits, clean, corrupt).exp()


def accuracy(logits: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> torch.Tensor:
    """1.0 where every answer position's argmax is the clean token (greedy exact match)."""
    return (logits.argmax(-1) == clean).all(-1).to(logits.dtype)


_BUILTIN: dict[str, MetricFn] = {
    "logit_diff": logit_diff,
    "logprob": logprob,
    "prob": prob,
    "accuracy": accuracy,
}


def resolve_metric(metric: str | MetricFn) -> tuple[str, MetricFn]:
    """Return ``(name, fn)`` for a metric name or a user callable."""
    if callable(metric):
        return getattr(metric, "__name__", "custom"), metric
    if metric not in _BUILTIN:
        raise MethodError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)} or a callable")
    return metric, _BUILTIN[metric]


def normalise(values: torch.Tensor, clean_mean: float, corrupt_mean: float) -> torch.Tensor:
    """Rescale so that the corrupt run's mean is 0 and the clean run's mean is 1."""
    denom = clean_mean - corrupt_mean
    if abs(denom) < 1e-12:
        raise MethodError(
            "clean and corrupt runs score the same on this metric, so it cannot be normalised; "
            "use normalize=False or pairs whose answers differ"
        )
    return (values - corrupt_mean) / denom
