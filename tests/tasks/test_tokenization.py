"""Tokenizer awareness: detection, exact answer ids, and refusals instead of mis-scoring."""

from __future__ import annotations

import pytest
import torch

from arithinterp.errors import TokenizationError
from arithinterp.tasks import (
    PromptSet,
    TaskSpec,
    answer_token_ids,
    detect_number_tokenization,
    generate,
    group_by_length,
    single_token_id,
    tokenize,
)
from tests.tasks.conftest import (
    make_digit_tokenizer,
    make_merging_tokenizer,
    make_sentencepiece_digit_tokenizer,
)


def test_detects_digit_level(digit_tok):
    info = detect_number_tokenization(digit_tok)
    assert info.kind == "digit"
    assert info.max_digits_per_token == 1
    assert info.single_token_numbers == range(10)


def test_detects_number_level(number_tok):
    info = detect_number_tokenization(number_tok)
    assert info.kind == "number"
    assert info.single_token_numbers == range(199)
    assert info.max_digits_per_token == 3


def test_detects_chunked(chunked_tok):
    info = detect_number_tokenization(chunked_tok)
    assert info.kind == "chunked"
    assert info.max_digits_per_token == 3
    assert info.single_token_numbers == range(1000)


def test_raw_tokenizers_objects_work_too(digit_tok):
    raw = digit_tok.backend_tokenizer
    assert detect_number_tokenization(raw).kind == "digit"
    ps = generate(TaskSpec(digits=2, format="fixed", n=4))
    assert torch.equal(tokenize(ps, raw).tokens, tokenize(ps, digit_tok).tokens)


def test_digit_tokenizer_fixed_addition(digit_tok):
    ps = PromptSet.from_operands(
        TaskSpec(digits=(1, 5), format="fixed"), [12345, 99999], [67890, 1]
    )
    tp = tokenize(ps, digit_tok)
    assert tp.tokens.shape == (2, 12 + 6) and tp.tokens.dtype == torch.long
    assert tp.prompt_len == 12 and tp.answer_len == 6
    assert tp.answer_positions.tolist() == [11, 12, 13, 14, 15, 16]
    # the vocabulary puts digit d at id d, so the answer ids are the answer's digits
    assert tp.answer_tokens.tolist() == [[0, 8, 0, 2, 3, 5], [1, 0, 0, 0, 0, 0]]
    assert torch.equal(tp.tokens[:, tp.prompt_len :], tp.answer_tokens)
    assert "".join(tp.str_tokens) == "12345+67890=080235"
    assert tp.prompt_tokens.shape == (2, 12)


def test_answer_positions_predict_answer_tokens_with_a_bos():
    tok = make_digit_tokenizer(post="bos")
    ps = generate(TaskSpec(operation="mul", digits=3, format="fixed_reversed", n=5))
    tp = tokenize(ps, tok)
    assert (tp.tokens[:, 0] == tok.bos_token_id).all()
    assert tp.prompt_len == 1 + 8
    assert tp.str_tokens[0] == "<bos>"
    for row, answer in enumerate(ps.answers):
        predicted = tp.tokens[row, tp.answer_positions + 1]
        assert "".join(tok.decode([int(i)]) for i in predicted) == answer


def test_sentencepiece_dummy_prefix_is_not_scored():
    tok = make_sentencepiece_digit_tokenizer()
    assert detect_number_tokenization(tok).kind == "digit"
    ps = PromptSet.from_operands(TaskSpec(digits=2), [12], [34])
    assert tok.convert_ids_to_tokens(tok("46", add_special_tokens=False)["input_ids"])[0] == "▁"
    tp = tokenize(ps, tok)
    assert tok.convert_ids_to_tokens(tp.answer_tokens[0].tolist()) == ["4", "6"]
    assert tok.convert_ids_to_tokens(tp.tokens[0].tolist())[0] == "▁"  # the prompt's own prefix
    assert answer_token_ids(ps, tok) == [tuple(tp.answer_tokens[0].tolist())]


def test_tokenizer_appending_eos_is_refused():
    tok = make_digit_tokenizer(post="eos")
    ps = generate(TaskSpec(format="fixed", n=3))
    with pytest.raises(TokenizationError, match="adds special tokens after the prompt"):
        tokenize(ps, tok)


def test_number_level_single_token_answers(number_tok):
    ps = generate(TaskSpec(operation="modadd", format="modular", p=113, n=50))
    tp = tokenize(ps, number_tok, answer="single")
    assert tp.tokens.shape == (50, 4) and tp.prompt_len == 3
    assert tp.answer_positions.tolist() == [2]
    vocab = number_tok.get_vocab()
    assert tp.answer_tokens[:, 0].tolist() == [vocab[a] for a in ps.answers]
    assert tp.tokens[:, 0].tolist() == [vocab[str(a)] for a in ps.frame.operand_a]


def test_plain_two_digit_addition_on_number_tokens(number_tok):
    ps = generate(TaskSpec(digits=2, n=40))
    tp = tokenize(ps, number_tok, answer="single")
    assert tp.prompt_len == 4
    assert [number_tok.decode([int(i)]) for i in tp.answer_tokens[:, 0]] == list(ps.answers)


def test_multi_token_answer_with_single_raises(digit_tok):
    ps = PromptSet.from_operands(TaskSpec(digits=3), [123], [456])
    with pytest.raises(TokenizationError, match=r"'579' \(prompt '123\+456='\) is 3 tokens"):
        tokenize(ps, digit_tok, answer="single")


def test_boundary_merge_raises():
    tok = make_merging_tokenizer()
    ps = PromptSet.from_operands(TaskSpec(digits=2), [12], [34])
    with pytest.raises(TokenizationError, match="merge across their boundary") as info:
        tokenize(ps, tok)
    assert "'=4'" in str(info.value)


def test_unequal_lengths_raise_and_group_by_length_splits(digit_tok):
    ps = generate(TaskSpec(digits=(1, 3), n=60))
    with pytest.raises(TokenizationError, match="unequal lengths") as info:
        tokenize(ps, digit_tok)
    assert "group_by_length" in str(info.value) and "format='fixed'" in str(info.value)
    groups = group_by_length(ps, digit_tok)
    assert sum(len(g) for g in groups) == 60
    ids = sorted(i for g in groups for i in g.prompts.frame.prompt_id)
    assert ids == list(range(60))
    for g in groups:
        assert g.tokens.shape[1] == g.prompt_len + g.answer_len
        assert all(len(p) + 0 == g.prompt_len for p in g.prompts.prompts)  # one char per token
        assert all(len(a) == g.answer_len for a in g.prompts.answers)
    keys = [(g.prompt_len, g.answer_len) for g in groups]
    assert keys == sorted(set(keys))


def test_chunked_tokenizer_plain_addition(chunked_tok):
    ps = PromptSet.from_operands(TaskSpec(digits=4, format="fixed"), [1234, 9999], [5678, 9999])
    tp = tokenize(ps, chunked_tok)
    assert [chunked_tok.decode([int(i)]) for i in tp.answer_tokens[0]] == ["069", "12"]
    assert [chunked_tok.decode([int(i)]) for i in tp.answer_tokens[1]] == ["199", "98"]


def test_unknown_characters_are_refused(digit_tok):
    ps = generate(TaskSpec(digits=2, format="fixed", few_shot=1, few_shot_separator=";", n=3))
    with pytest.raises(TokenizationError, match="cannot represent.*unknown tokens"):
        tokenize(ps, digit_tok)
    templ = generate(TaskSpec(format="template", n=3))
    with pytest.raises(TokenizationError, match="cannot represent"):
        tokenize(templ, digit_tok)


def test_few_shot_separator_the_tokenizer_drops_is_refused(digit_tok):
    # the zoo tokenizers split on whitespace: a newline separator would vanish
    ps = generate(TaskSpec(digits=2, format="fixed", few_shot=2, n=3))
    with pytest.raises(TokenizationError, match=r"separator '\\n' tokenizes to nothing"):
        tokenize(ps, digit_tok)
    ok = generate(TaskSpec(digits=2, format="fixed", few_shot=2, few_shot_separator="%", n=3))
    tp = tokenize(ok, digit_tok)
    assert tp.prompt_len == 2 * (6 + 3 + 1) + 6  # two solved examples and a separator each


def test_answer_id_helpers(digit_tok, number_tok):
    ps = PromptSet.from_operands(TaskSpec(digits=2), [12], [34])
    assert answer_token_ids(ps, digit_tok) == [(4, 6)]
    assert answer_token_ids(["7", "10"], number_tok) == [
        (number_tok.get_vocab()["7"],), (number_tok.get_vocab()["10"],)
    ]
    assert single_token_id(number_tok, "150") == number_tok.get_vocab()["150"]
    with pytest.raises(TokenizationError, match="not a single known token"):
        single_token_id(digit_tok, "15")
    with pytest.raises(TokenizationError, match="not a single known token"):
        single_token_id(number_tok, "500")


def test_bad_answer_mode(digit_tok):
    with pytest.raises(TokenizationError, match="'multi' or 'single'"):
        tokenize(generate(TaskSpec(format="fixed", n=2)), digit_tok, answer="all")


def test_shared_tokenization_encodes_each_prompt_set_once_inside_the_block(digit_tok, monkeypatch):
    import arithinterp.tasks.tokenization as tokenization
    from arithinterp.tasks import shared_tokenization

    calls = []
    encode = tokenization._encode_rows
    monkeypatch.setattr(tokenization, "_encode_rows", lambda *a: calls.append(a[2]) or encode(*a))
    ps = generate(TaskSpec(digits=2, format="fixed", n=6, seed=0))
    same_content = PromptSet.from_frame(ps.spec, ps.frame.copy())
    outside = tokenize(ps, digit_tok)
    with shared_tokenization():
        first = tokenize(ps, digit_tok)
        again = tokenize(same_content, digit_tok)  # equal prompts and answers: the same tensors
        subset = tokenize(ps[:3], digit_tok)
    after = tokenize(ps, digit_tok)
    assert calls == ["multi"] * 4  # outside, first, the 3-prompt subset, after: never the repeat
    assert again.tokens is first.tokens and again.prompts is same_content
    assert torch.equal(first.tokens, outside.tokens) and torch.equal(after.tokens, outside.tokens)
    assert after.tokens is not first.tokens and subset.tokens.shape[0] == 3
    assert not tokenization._SHARED  # the block leaves nothing cached behind
