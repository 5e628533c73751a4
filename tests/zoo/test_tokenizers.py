"""The two zoo tokenizer kinds write the example prompts exactly as specified."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from arithinterp.zoo.data import TaskFormat
from arithinterp.zoo.recipe import TaskSpec
from arithinterp.zoo.tokenizers import DIGIT_VOCAB, digit_tokenizer, number_tokenizer


def test_digit_vocab_ids():
    tok = digit_tokenizer()
    expected = [*"0123456789", "+", "-", "*", "/", "%", "=", " ", "<pad>", "<bos>", "<eos>"]
    assert list(DIGIT_VOCAB) == expected
    assert tok.convert_ids_to_tokens(list(range(20))) == expected
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (17, 18, 19)


def test_digit_addition_prompt():
    tok = digit_tokenizer()
    assert tok("12345+67890=")["input_ids"] == [1, 2, 3, 4, 5, 10, 6, 7, 8, 9, 0, 15]
    assert tok("080235")["input_ids"] == [0, 8, 0, 2, 3, 5]
    assert tok(" 12 + 3 = ")["input_ids"] == [1, 2, 10, 3, 15]  # whitespace is dropped
    assert tok.decode([1, 2, 10, 3, 15]) == "12+3="


def test_digit_multiplication_prompt():
    assert digit_tokenizer()("123*456=")["input_ids"] == [1, 2, 3, 12, 4, 5, 6, 15]


def test_number_tokenizer_modadd():
    tok = number_tokenizer(113)
    assert tok("5 7 =")["input_ids"] == [5, 7, 113]
    assert tok("112 0 =")["input_ids"] == [112, 0, 113]
    assert tok.convert_ids_to_tokens([113, 114, 119, 120, 121]) == [
        "=",
        "+",
        "<pad>",
        "<bos>",
        "<eos>",
    ]
    assert len(tok) == 122


def test_number_tokenizer_two_digit_addition():
    tok = number_tokenizer(199)
    assert tok("37+85=")["input_ids"] == [37, 200, 85, 199]
    assert tok("122")["input_ids"] == [122]
    assert tok("198")["input_ids"] == [198]


def test_no_special_tokens_added_and_unknown_is_pad():
    tok = digit_tokenizer()
    assert tok("1+1=", add_special_tokens=True)["input_ids"] == [1, 10, 1, 15]
    assert tok.unk_token_id == tok.pad_token_id == 17
    assert tok("1a")["input_ids"] == [1, 17]
    num = number_tokenizer(113)
    assert num("200 1 =")["input_ids"] == [num.unk_token_id, 1, 113]  # 200 is not a token


def test_save_and_reload(tmp_path):
    number_tokenizer(113).save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok("5 7 =")["input_ids"] == [5, 7, 113]


@pytest.mark.parametrize(
    ("task", "a", "b", "text", "answer"),
    [
        (TaskSpec(kind="add", n_digits=5), 12345, 67890, "12345+67890=", "080235"),
        (TaskSpec(kind="add", n_digits=5), 7, 45, "00007+00045=", "000052"),
        (TaskSpec(kind="mul", n_digits=3), 123, 456, "123*456=", "880650"),
        (TaskSpec(kind="modadd", p=113, train_fraction=0.3), 100, 50, "100 50 =", "37"),
        (TaskSpec(kind="add_tok", max_operand=100, train_fraction=0.8), 37, 85, "37+85=", "122"),
    ],
)
def test_task_ids_match_tokenizer(task, a, b, text, answer):
    """data.py writes ids directly; they must be what the tokenizer makes of the text."""
    fmt = TaskFormat.from_task(task)
    tok = digit_tokenizer() if task.kind in ("add", "mul") else number_tokenizer(fmt.n_numbers)
    assert fmt.prompt_text(a, b) == text
    assert fmt.answer_text(a, b) == answer
    seq = fmt.sequences(np.array([a]), np.array([b]))[0].tolist()
    assert seq == tok(text)["input_ids"] + tok(answer)["input_ids"]
