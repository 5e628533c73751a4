"""Turning prompts into token ids a model can be scored on, or refusing clearly.

How a tokenizer cuts numbers decides what "the answer" is to a model:

* ``digit``: one token per digit (Llama 1/2, the zoo's digit models);
* ``chunked``: digit runs cut into multi-digit chunks (GPT-2's BPE, Llama 3's
  groups of up to three);
* ``number``: every integer in ``0..N`` is one token (the zoo's ``add-2d-tok``
  and modular-addition models).

:func:`tokenize` builds the teacher-forced sequence ``prompt tokens + answer
tokens`` and checks everything that would otherwise silently mis-score an
answer: unknown tokens, a tokenizer merging prompt and answer across the
boundary, unequal lengths within a batch, and a multi-token answer where a
single token is required. Each failure raises
:class:`~arithinterp.errors.TokenizationError` saying what to do instead.

Tokenizers are Hugging Face tokenizers (``PreTrainedTokenizerBase``) or raw
``tokenizers.Tokenizer`` objects. Nothing here downloads anything.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from arithinterp.errors import TaskError, TokenizationError
from arithinterp.tasks.promptset import PromptSet

NumberTokenization = Literal["digit", "chunked", "number"]
AnswerMode = Literal["multi", "single"]

_PROBES = ("7", "42", "123", "9876", "98765", "1234567")
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class NumberTokenInfo:
    """How a tokenizer writes integers.

    ``single_token_numbers`` is the range ``0..N-1`` of integers that are each
    exactly one token when written without a leading space (None when even
    ``"0"`` is not), e.g. ``range(0, 10)`` for a digit tokenizer.
    """

    kind: NumberTokenization
    max_digits_per_token: int
    single_token_numbers: range | None


@dataclass(frozen=True, eq=False)
class TokenizedPrompts:
    """Token ids for teacher-forced scoring of ``prompts``.

    * ``tokens``: ``[prompt, pos]`` int64, the prompt's tokens (with the BOS the
      tokenizer adds, if any) followed by the answer's tokens;
    * ``prompt_len``: positions ``0..prompt_len-1`` hold the prompt;
    * ``answer_tokens``: ``[prompt, answer_len]``, the answer's token ids;
    * ``answer_positions``: ``[answer_len]``, the positions whose next-token
      logits predict each answer token (``prompt_len - 1 + i``);
    * ``str_tokens``: the token strings of the first sequence (prompt and
      answer, one per position of ``tokens``), for labelling ``pos`` axes.
    """

    prompts: PromptSet
    tokens: torch.Tensor
    prompt_len: int
    answer_tokens: torch.Tensor
    answer_positions: torch.Tensor
    str_tokens: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def answer_len(self) -> int:
        return int(self.answer_tokens.shape[1])

    @property
    def prompt_tokens(self) -> torch.Tensor:
        """``[prompt, prompt_len]``: the prompt alone, for running a model without the answer."""
        return self.tokens[:, : self.prompt_len]

    def __repr__(self) -> str:
        return (
            f"TokenizedPrompts(n={len(self)}, prompt_len={self.prompt_len}, "
            f"answer_len={self.answer_len}, str_tokens={list(self.str_tokens)!r})"
        )


# ---- tokenizer access ----------------------------------------------------------------


def _is_hf(tokenizer: Any) -> bool:
    return hasattr(tokenizer, "convert_ids_to_tokens") and callable(tokenizer)


def _encode(tokenizer: Any, texts: Sequence[str], *, special: bool) -> list[list[int]]:
    """Token ids of each text; a text the tokenizer rejects raises TokenizationError."""
    texts = list(texts)
    try:
        return _encode_unchecked(tokenizer, texts, special=special)
    except TokenizationError:
        raise
    except Exception:
        for text in texts:  # find the culprit for the message
            try:
                _encode_unchecked(tokenizer, [text], special=special)
            except Exception as exc:
                raise TokenizationError(
                    f"the tokenizer cannot encode {text!r}: {exc}. Its vocabulary lacks a "
                    "character of this prompt; use a format made of characters it knows"
                ) from None
        raise


def _encode_unchecked(tokenizer: Any, texts: list[str], *, special: bool) -> list[list[int]]:
    if not texts:
        return []
    if _is_hf(tokenizer):
        return [list(x) for x in tokenizer(texts, add_special_tokens=special)["input_ids"]]
    if hasattr(tokenizer, "encode_batch"):
        return [list(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=special)]
    raise TokenizationError(
        f"unsupported tokenizer {type(tokenizer).__name__}: pass a Hugging Face tokenizer "
        "or a tokenizers.Tokenizer"
    )


def _piece(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _unk_id(tokenizer: Any) -> int | None:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        return int(unk)
    model = getattr(getattr(tokenizer, "backend_tokenizer", tokenizer), "model", None)
    name = getattr(model, "unk_token", None)
    if name and hasattr(tokenizer, "token_to_id"):
        return tokenizer.token_to_id(name)
    if name and hasattr(tokenizer, "convert_tokens_to_ids"):
        return tokenizer.convert_tokens_to_ids(name)
    return None


def _digits_per_piece(tokenizer: Any, ids: list[int]) -> list[str]:
    """Digit strings of the digit-bearing tokens (prefix-space tokens are skipped)."""
    out = []
    for i in ids:
        digits = "".join(ch for ch in _piece(tokenizer, i) if ch.isdigit())
        if digits:
            out.append(digits)
    return out


# ---- detection -------------------------------------------------------------------------


def detect_number_tokenization(tokenizer: Any) -> NumberTokenInfo:
    """Classify how ``tokenizer`` writes integers by tokenizing a few probe numbers.

    Probes (``7 42 123 9876 98765 1234567``, with and without a leading
    space) that the tokenizer cannot represent (unknown token) are ignored, so
    a number-level vocabulary ``0..198`` is recognised from the short ones.
    """
    unk = _unk_id(tokenizer)
    max_digits = 0
    split_multi = False
    seen = 0
    for probe in _PROBES:
        for text in (probe, " " + probe):
            try:
                ids = _encode_unchecked(tokenizer, [text], special=False)[0]
            except Exception:
                continue
            pieces = _digits_per_piece(tokenizer, ids)
            if (unk is not None and unk in ids) or "".join(pieces) != probe:
                continue
            seen += 1
            max_digits = max(max_digits, *(len(p) for p in pieces))
            if len(pieces) > 1 and max(len(p) for p in pieces) > 1:
                split_multi = True
    if not seen:
        raise TokenizationError(
            "the tokenizer cannot represent any of the probe numbers "
            f"{', '.join(_PROBES)}; it cannot express arithmetic answers"
        )
    singles = _single_token_numbers(tokenizer, unk)
    if max_digits == 1:
        kind: NumberTokenization = "digit"
    elif split_multi:
        kind = "chunked"
    else:
        kind = "number"
    return NumberTokenInfo(kind, max_digits, singles)


def _is_single(tokenizer: Any, text: str, ids: list[int], unk: int | None) -> bool:
    if unk is not None and unk in ids:
        return False
    return _digits_per_piece(tokenizer, ids) == [text]


def _single_token_numbers(tokenizer: Any, unk: int | None, limit: int = 1 << 20) -> range | None:
    start, block = 0, 1024
    while start < limit:
        texts = [str(i) for i in range(start, start + block)]
        try:
            encoded = _encode_unchecked(tokenizer, texts, special=False)
        except Exception:
            encoded = []
            for t in texts:
                try:
                    encoded.append(_encode_unchecked(tokenizer, [t], special=False)[0])
                except Exception:
                    encoded.append([] if unk is None else [unk])
        for text, ids in zip(texts, encoded):
            if not _is_single(tokenizer, text, ids, unk):
                n = int(text)
                return range(0, n) if n > 0 else None
        start += block
        block *= 2
    return range(0, start)


# ---- tokenize --------------------------------------------------------------------------


def _encode_rows(
    prompts: PromptSet, tokenizer: Any, answer: AnswerMode
) -> tuple[list[list[int]], list[list[int]]]:
    """Per row: full prompt ids (with special tokens) and answer ids, after every check."""
    if answer not in ("multi", "single"):
        raise TokenizationError(f"answer must be 'multi' or 'single', got {answer!r}")
    if not isinstance(prompts, PromptSet):
        raise TaskError(
            f"prompts must be a PromptSet (arithinterp.tasks.generate(spec)), got "
            f"{type(prompts).__name__}; its answers and annotations are what methods score"
        )
    if len(prompts) == 0:
        raise TokenizationError("no prompts to tokenize")
    texts, answers = list(prompts.prompts), list(prompts.answers)
    spec = prompts.spec
    if spec.few_shot and not _encode(tokenizer, [spec.few_shot_separator], special=False)[0]:
        raise TokenizationError(
            f"the few-shot separator {spec.few_shot_separator!r} tokenizes to nothing (the "
            "tokenizer drops it), so the solved examples would run into each other; pick a "
            "separator in its vocabulary with few_shot_separator=..."
        )
    full = _encode(tokenizer, texts, special=True)
    bare = _encode(tokenizer, texts, special=False)
    ans = _encode(tokenizer, answers, special=False)
    joint = _encode(tokenizer, [p + a for p, a in zip(texts, answers)], special=False)
    unk = _unk_id(tokenizer)
    for row, (f, b, a, j) in enumerate(zip(full, bare, ans, joint)):
        text, answer_text = texts[row], answers[row]
        if len(f) < len(b) or f[len(f) - len(b) :] != b:
            raise TokenizationError(
                f"the tokenizer adds special tokens after the prompt {text!r} "
                f"({_show(tokenizer, f)}), so an answer cannot follow it; configure it not to "
                "append EOS (e.g. add_eos_token=False)"
            )
        if not a:
            raise TokenizationError(f"answer {answer_text!r} of {text!r} tokenizes to nothing")
        if (unk is not None and unk in j) or _squash(tokenizer.decode(j)) != _squash(
            text + answer_text
        ):
            raise TokenizationError(
                f"the tokenizer cannot represent {text + answer_text!r}: it becomes "
                f"{_show(tokenizer, j)} (unknown tokens). Use a format made of characters "
                "in its vocabulary"
            )
        in_context = j[len(b) :] if j[: len(b)] == b else None
        if in_context is None or not in_context or _squash(
            tokenizer.decode(in_context)
        ) != _squash(answer_text):
            raise TokenizationError(
                f"prompt and answer merge across their boundary: {text!r} + {answer_text!r} "
                f"tokenizes jointly as {_show(tokenizer, j)} but separately as "
                f"{_show(tokenizer, b)} + {_show(tokenizer, a)}, so the answer tokens are not "
                "what the model predicts. Use a format whose answer starts a new token (a "
                "digit-level tokenizer, or a template whose answer has a leading space)"
            )
        # SentencePiece prefixes a standalone answer with a dummy space ("46" -> "▁", "4",
        # "6") that never occurs after the prompt: score the tokens the model actually sees
        ans[row] = in_context
    check_context(max(len(f) + len(a) for f, a in zip(full, ans)), _context_limit(tokenizer), spec)
    if answer == "single":
        for row, a in enumerate(ans):
            if len(a) != 1:
                raise TokenizationError(
                    f"answer='single' needs every answer to be one token, but "
                    f"{answers[row]!r} (prompt {texts[row]!r}) is {len(a)} tokens "
                    f"{_show(tokenizer, a)}. Use answer='multi' to score all answer tokens, "
                    "or a task whose answers are single tokens for this tokenizer"
                )
    return full, ans


def _context_limit(tokenizer: Any) -> int | None:
    """The positions the model reads, as the backend recorded them on its tokenizer
    (``model_max_length``; transformers' "unlimited" default counts as unknown)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else None


def check_context(length: int, n_ctx: int | None, spec: Any = None) -> None:
    """Raise :class:`TokenizationError` when prompt plus answer (``length`` tokens) exceed the
    model's context of ``n_ctx`` positions (``None``: unknown, nothing to check)."""
    if n_ctx is None or length <= n_ctx:
        return
    task = ""
    if spec is not None:
        task = f" (task: digits={spec.digits}, format={spec.format!r}, few_shot={spec.few_shot})"
    raise TokenizationError(
        f"prompt plus answer is {length} tokens but the model's context holds {n_ctx} "
        f"positions{task}; use fewer digits, fewer few-shot examples or a shorter format"
    )


def _squash(text: str) -> str:
    # whitespace and case are left to the tokenizer's normaliser; only lost content matters
    return _WS.sub("", text).casefold()


def _show(tokenizer: Any, ids: list[int]) -> str:
    return "[" + ", ".join(repr(_piece(tokenizer, i)) for i in ids) + "]"


def _assemble(
    prompts: PromptSet, tokenizer: Any, full: list[list[int]], ans: list[list[int]]
) -> TokenizedPrompts:
    prompt_len, answer_len = len(full[0]), len(ans[0])
    tokens = torch.tensor([f + a for f, a in zip(full, ans)], dtype=torch.long)
    return TokenizedPrompts(
        prompts=prompts,
        tokens=tokens,
        prompt_len=prompt_len,
        answer_tokens=tokens[:, prompt_len:].clone(),
        answer_positions=torch.arange(prompt_len - 1, prompt_len - 1 + answer_len),
        str_tokens=tuple(_piece(tokenizer, int(i)) for i in tokens[0]),
    )


#: The caches of the active :func:`shared_tokenization` blocks (innermost last).
_SHARED: list[dict[tuple[str, int, str], tuple[Any, TokenizedPrompts]]] = []


@contextmanager
def shared_tokenization() -> Iterator[None]:
    """Within the block, :func:`tokenize` tokenizes each prompt set (by content: its
    :attr:`~PromptSet.hash`) once per tokenizer and answer mode, and hands every later caller
    the same token tensors (callers must not modify them in place).

    One analysis that runs many methods on the same prompts (an attribution report, a
    pipeline step) wraps its work in this block; outside it nothing is cached.
    """
    _SHARED.append({})
    try:
        yield
    finally:
        _SHARED.pop()


def _shared(prompts: PromptSet, tokenizer: Any, answer: AnswerMode) -> TokenizedPrompts:
    cache = _SHARED[-1]
    key = (prompts.hash, id(tokenizer), answer)
    hit = cache.get(key)
    if hit is None or hit[0] is not tokenizer:  # the tokenizer is held, so its id is not reused
        hit = (tokenizer, _tokenize(prompts, tokenizer, answer))
        cache[key] = hit
    found = hit[1]
    return found if found.prompts is prompts else replace(found, prompts=prompts)


def tokenize(
    prompts: PromptSet, tokenizer: Any, *, answer: AnswerMode = "multi"
) -> TokenizedPrompts:
    """Tokenize prompts and answers for teacher-forced scoring (see :class:`TokenizedPrompts`).

    The prompt is tokenized as the tokenizer is configured (a BOS when it
    adds one), the answer without special tokens, and their joint
    tokenization must start with the prompt's tokens and continue with
    tokens that spell the answer (the answer ids are taken from that joint
    tokenization, which is what the model reads; they equal the standalone
    answer ids except for SentencePiece's dummy prefix space). All prompts must share one
    prompt length and one answer length; otherwise use
    :func:`group_by_length`. ``answer="single"`` requires one-token answers.
    Inside :func:`shared_tokenization`, a prompt set is tokenized once per tokenizer and mode.
    """
    if _SHARED:
        return _shared(prompts, tokenizer, answer)
    return _tokenize(prompts, tokenizer, answer)


def _tokenize(prompts: PromptSet, tokenizer: Any, answer: AnswerMode) -> TokenizedPrompts:
    full, ans = _encode_rows(prompts, tokenizer, answer)
    plens, alens = Counter(len(f) for f in full), Counter(len(a) for a in ans)
    if len(plens) > 1 or len(alens) > 1:
        raise TokenizationError(
            f"prompts tokenize to unequal lengths: prompt lengths {dict(sorted(plens.items()))}, "
            f"answer lengths {dict(sorted(alens.items()))} (length: count). Use a fixed format "
            "(format='fixed' or 'fixed_reversed' pads operands and answers) or split the "
            "prompts with group_by_length(prompts, tokenizer)"
        )
    return _assemble(prompts, tokenizer, full, ans)


def group_by_length(
    prompts: PromptSet, tokenizer: Any, *, answer: AnswerMode = "multi"
) -> list[TokenizedPrompts]:
    """Split ``prompts`` into groups of equal (prompt, answer) token lengths, each tokenized.

    Groups are ordered by (prompt length, answer length); each group's
    ``prompts`` is the subset it covers (``prompts.frame.prompt_id`` maps rows
    back to the full set).
    """
    full, ans = _encode_rows(prompts, tokenizer, answer)
    groups: dict[tuple[int, int], list[int]] = {}
    for row, (f, a) in enumerate(zip(full, ans)):
        groups.setdefault((len(f), len(a)), []).append(row)
    return [
        _assemble(prompts[rows], tokenizer, [full[r] for r in rows], [ans[r] for r in rows])
        for _, rows in sorted(groups.items())
    ]


def answer_token_ids(
    answers: PromptSet | Sequence[str], tokenizer: Any
) -> list[tuple[int, ...]]:
    """Token ids of each answer.

    For a :class:`PromptSet`: the ids as the answer follows its prompt, with
    every check of :func:`tokenize` except equal lengths. For bare strings:
    the text tokenized on its own, without special tokens.
    """
    if isinstance(answers, PromptSet):
        return [tuple(ids) for ids in _encode_rows(answers, tokenizer, "multi")[1]]
    return [tuple(ids) for ids in _encode(tokenizer, list(answers), special=False)]


def single_token_id(tokenizer: Any, text: str) -> int:
    """The one token id of ``text``; raises TokenizationError when it is not one token."""
    ids = _encode(tokenizer, [text], special=False)[0]
    unk = _unk_id(tokenizer)
    if len(ids) != 1 or (unk is not None and ids[0] == unk):
        raise TokenizationError(
            f"{text!r} is not a single known token for this tokenizer: it tokenizes as "
            f"{_show(tokenizer, ids)}"
        )
    return ids[0]
