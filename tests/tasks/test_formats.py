"""Every output format writes exactly the text a researcher expects."""

from __future__ import annotations

import numpy as np
import pytest

from arithinterp.errors import TaskError
from arithinterp.tasks import PromptSet, TaskSpec, generate


def one(spec: dict, a: int, b: int) -> tuple[str, str]:
    ps = PromptSet.from_operands(TaskSpec(**spec), [a], [b])
    return ps.prompts[0], ps.answers[0]


@pytest.mark.parametrize(
    ("spec", "a", "b", "prompt", "answer"),
    [
        ({"digits": 3}, 123, 456, "123+456=", "579"),
        ({"digits": 3, "format": "reversed"}, 123, 456, "123+456=", "975"),
        ({"digits": 3, "format": "fixed"}, 123, 456, "123+456=", "0579"),
        ({"digits": 5, "format": "fixed"}, 12345, 67890, "12345+67890=", "080235"),
        ({"digits": 3, "format": "fixed_reversed"}, 123, 456, "123+456=", "9750"),
        ({"operation": "mul", "digits": 3, "format": "fixed_reversed"}, 123, 456, "123*456=",
         "880650"),
        ({"operation": "mul", "digits": 3, "format": "fixed"}, 100, 100, "100*100=", "010000"),
        ({"digits": (1, 3), "format": "fixed"}, 7, 45, "007+045=", "0052"),
        ({"digits": (1, 3), "format": "fixed", "pad_operands": False}, 7, 45, "7+45=", "0052"),
        ({"digits": (1, 3), "pad_operands": True}, 7, 45, "007+045=", "52"),
        ({"operation": "sub", "digits": 3}, 123, 456, "123-456=", "-333"),
        ({"operation": "sub", "digits": 3, "format": "reversed"}, 123, 450, "123-450=", "-723"),
        ({"operation": "sub", "digits": 3, "format": "fixed"}, 456, 123, "456-123=", "+333"),
        ({"operation": "sub", "digits": 3, "format": "fixed"}, 123, 456, "123-456=", "-333"),
        ({"operation": "sub", "digits": 3, "format": "fixed", "allow_negative": False}, 456, 450,
         "456-450=", "006"),
        ({"operation": "floordiv", "digits": 3}, 456, 123, "456/123=", "3"),
        ({"operation": "mod", "digits": 3}, 456, 123, "456%123=", "87"),
        ({"operation": "modadd", "format": "modular"}, 37, 85, "37 85 =", "9"),
        ({"operation": "modadd", "format": "plain", "p": 97}, 50, 60, "50+60=", "13"),
        ({"format": "template"}, 123, 456, "123 plus 456 is", " 579"),
        ({"format": "template", "template": "The sum of {a} and {b} is"}, 123, 456,
         "The sum of 123 and 456 is", " 579"),
        ({"operation": "mul", "format": "template", "digits": (1, 2)}, 12, 3, "12 times 3 is", " 36"),
    ],
)
def test_format_text(spec, a, b, prompt, answer):
    assert one(spec, a, b) == (prompt, answer)


def test_few_shot_prefix_holds_solved_examples_in_the_same_format():
    ps = generate(TaskSpec(digits=2, format="reversed", few_shot=3, n=20))
    for prompt, query, row in zip(ps.prompts, ps.frame["query"], ps.frame.itertuples()):
        assert prompt.endswith(query) and query == f"{row.operand_a}+{row.operand_b}="
        shots = prompt[: -len(query)].split("\n")
        assert len(shots) == 4 and shots[-1] == ""
        for shot in shots[:-1]:
            lhs, rhs = shot.split("=")
            x, y = (int(v) for v in lhs.split("+"))
            assert rhs == str(x + y)[::-1]


def test_few_shot_template_uses_leading_space_answers_and_custom_separator():
    ps = generate(TaskSpec(format="template", few_shot=1, few_shot_separator=". ", n=5))
    example, query = ps.prompts[0].split(". ")
    words = example.split(" ")
    assert words[1] == "plus" and int(words[-1]) == int(words[0]) + int(words[2])
    assert query == ps.frame["query"][0]


def test_fixed_formats_give_equal_prompt_and_answer_lengths():
    for fmt in ("fixed", "fixed_reversed"):
        ps = generate(TaskSpec(operation="sub", digits=(1, 4), format=fmt, n=200))
        assert len({len(p) for p in ps.prompts}) == 1
        assert len({len(a) for a in ps.answers}) == 1
    ps = generate(TaskSpec(digits=(1, 4), format="plain", n=200))
    assert len({len(p) for p in ps.prompts}) > 1


def test_answer_text_matches_the_integer_answer_for_every_format():
    for op in ("add", "sub", "mul", "floordiv", "mod"):
        for fmt in ("plain", "reversed", "fixed", "fixed_reversed", "template"):
            ps = generate(TaskSpec(operation=op, digits=(1, 3), format=fmt, n=60))
            for text, ans in zip(ps.answers, ps.frame["answer"]):
                body = text.strip()
                sign = -1 if body.startswith("-") else 1
                digits = body.lstrip("+-")
                if fmt in ("reversed", "fixed_reversed"):
                    digits = digits[::-1]
                assert sign * int(digits) == ans, (op, fmt, text)


def test_subsets_keep_spec_and_prompt_ids():
    ps = generate(TaskSpec(n=30))
    sub = ps[ps.frame.answer > 1000]
    assert len(sub) == int((ps.frame.answer > 1000).sum())
    assert list(sub.frame.prompt_id) == list(np.flatnonzero(ps.frame.answer > 1000))
    assert ps[3].prompts == (ps.prompts[3],)
    assert ps[[5, 1]].prompts == (ps.prompts[5], ps.prompts[1])
    assert ps[2:4].answers == ps.answers[2:4]
    with pytest.raises(IndexError):
        ps[30]
    assert "PromptSet(n=30, operation='add', format='plain'" in repr(ps)
    assert "<table" in ps._repr_html_()


def test_from_operands_rejects_operands_outside_the_domain():
    with pytest.raises(TaskError, match="operand domain 100..999"):
        PromptSet.from_operands(TaskSpec(digits=3), [12], [345])
    with pytest.raises(TaskError, match="nonzero divisors"):
        PromptSet.from_operands(TaskSpec(operation="mod", digits=(1, 2)), [5], [0])
