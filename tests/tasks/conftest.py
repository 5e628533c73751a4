"""Offline tokenizers shaped like the zoo's and GPT-2's, built in milliseconds."""

from __future__ import annotations

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SYMBOLS = ["+", "-", "*", "/", "%", "=", " "]
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def _wrap(vocab: list[str], pattern: str, *, post: str | None = None) -> PreTrainedTokenizerFast:
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(pattern), "isolated")]
    )
    if post == "bos":
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", ids["<bos>"])]
        )
    elif post == "eos":
        tok.post_processor = processors.TemplateProcessing(
            single="$A <eos>", special_tokens=[("<eos>", ids["<eos>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        unk_token="<unk>",
    )


def make_digit_tokenizer(post: str | None = None) -> PreTrainedTokenizerFast:
    """The zoo's digit-level tokenizer: one token per digit or operator."""
    vocab = [str(i) for i in range(10)] + SYMBOLS + SPECIALS
    return _wrap(vocab, r"\d|[^\d\s]", post=post)


def make_number_tokenizer(n: int = 199) -> PreTrainedTokenizerFast:
    """The zoo's number-level tokenizer: "0".."n-1" are whole tokens."""
    vocab = [str(i) for i in range(n)] + SYMBOLS + SPECIALS
    return _wrap(vocab, r"\d+|[^\d\s]")


def make_chunked_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 / Llama-3 style: digit runs cut into chunks of up to three digits."""
    vocab = [str(i) for i in range(1000)] + [f"{i:02d}" for i in range(100)] + [
        f"{i:03d}" for i in range(100)
    ] + SYMBOLS + SPECIALS
    vocab = list(dict.fromkeys(vocab))
    return _wrap(vocab, r"\d{1,3}|[^\d\s]")


def make_merging_tokenizer() -> PreTrainedTokenizerFast:
    """A vocabulary with "=d" tokens: the prompt's "=" merges with the answer's first digit."""
    vocab = [str(i) for i in range(10)] + [f"={i}" for i in range(10)] + SYMBOLS + SPECIALS
    return _wrap(vocab, r"=\d|\d|[^\d\s]")


def make_sentencepiece_digit_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-2 style: digits split, and a dummy "▁" prefixed to any text tokenized alone."""
    vocab = ["▁"] + [str(i) for i in range(10)] + SYMBOLS[:-1] + SPECIALS
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
            pre_tokenizers.Split(Regex(r"▁|\d|[^\d▁]"), "isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>")


@pytest.fixture(scope="session")
def digit_tok():
    return make_digit_tokenizer()


@pytest.fixture(scope="session")
def number_tok():
    return make_number_tokenizer()


@pytest.fixture(scope="session")
def chunked_tok():
    return make_chunked_tokenizer()
