"""The two tokenizer kinds of the zoo, built from scratch (no download).

* **digit-level** (`digit_tokenizer`): every character is one token. Vocabulary,
  in id order: ``"0".."9"`` (ids 0-9), ``"+"`` 10, ``"-"`` 11, ``"*"`` 12,
  ``"/"`` 13, ``"%"`` 14, ``"="`` 15, ``" "`` 16, ``"<pad>"`` 17, ``"<bos>"`` 18,
  ``"<eos>"`` 19. Whitespace in the input is dropped, so the ``" "`` token is
  never produced by ``encode``; it exists so decoders and future formats can
  name it.
* **number-level** (`number_tokenizer(n)`): every number ``"0".."n-1"`` is one
  token whose id is its value, then ``"="`` (id n), ``"+"``, ``"-"``, ``"*"``,
  ``"/"``, ``"%"`` (ids n+1..n+5), then ``"<pad>"``, ``"<bos>"``, ``"<eos>"``.
  ``"="`` comes first among the operators so that the mod-p model sees the
  vocabulary of Nanda et al. (numbers 0..p-1, then "=" as token p). A digit
  run is one token; whitespace is dropped.

Neither tokenizer adds BOS/EOS automatically. A character or number outside
the vocabulary encodes as ``<pad>``, which doubles as the unknown token
(``tokenizer.unk_token_id``); code that builds prompts should treat it as
"not expressible". There is no separate ``<unk>`` entry because the specified
vocabularies have none, and a tokenizer must map unknown text to something
for TransformerLens (it probes BOS/EOS handling by encoding ``"a"``).
"""

from __future__ import annotations

from typing import Literal

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "DIGIT_VOCAB",
    "OPERATORS",
    "SPECIALS",
    "TokenizerKind",
    "build_tokenizer",
    "digit_tokenizer",
    "number_tokenizer",
    "number_vocab",
]

TokenizerKind = Literal["digit", "number"]

OPERATORS: tuple[str, ...] = ("+", "-", "*", "/", "%", "=")
SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")
DIGIT_VOCAB: tuple[str, ...] = (
    *(str(d) for d in range(10)),
    *OPERATORS,
    " ",
    *SPECIALS,
)
_UNK = "<pad>"
_NUMBER_OPERATORS: tuple[str, ...] = ("=", "+", "-", "*", "/", "%")


def number_vocab(n_numbers: int) -> tuple[str, ...]:
    """The number-level vocabulary in id order for numbers ``0..n_numbers-1``."""
    return (*(str(i) for i in range(n_numbers)), *_NUMBER_OPERATORS, *SPECIALS)


def _wrap(tok: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token=_UNK,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.padding_side = "left"  # arithmetic prompts are read at their last position
    return fast


def digit_tokenizer(max_length: int = 64) -> PreTrainedTokenizerFast:
    """One token per character; ids as in the module docstring."""
    vocab = {tok: i for i, tok in enumerate(DIGIT_VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=_UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex("."), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Fuse()
    return _wrap(tok, max_length)


def number_tokenizer(n_numbers: int, max_length: int = 16) -> PreTrainedTokenizerFast:
    """Whole numbers ``0..n_numbers-1`` as single tokens; ids as in the module docstring."""
    vocab = {tok: i for i, tok in enumerate(number_vocab(n_numbers))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=_UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(r"\d+|."), behavior="isolated"),
        ]
    )
    return _wrap(tok, max_length)


def build_tokenizer(kind: TokenizerKind, n_numbers: int | None = None) -> PreTrainedTokenizerFast:
    """Build a zoo tokenizer by kind (``n_numbers`` is required for ``"number"``)."""
    if kind == "digit":
        return digit_tokenizer()
    if n_numbers is None:
        raise ValueError("a number-level tokenizer needs n_numbers")
    return number_tokenizer(n_numbers)
