"""The probe sweep's input-visibility mask: where a teacher-forced input already shows the
digit a target is about."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from arithinterp.methods import answer_visible
from arithinterp.tasks import TaskSpec, generate
from arithinterp.zoo import zoo_path


@pytest.fixture(scope="module")
def digit_tokenizer():
    """One token per character (the zoo's 5-digit addition tokenizer)."""
    return AutoTokenizer.from_pretrained(zoo_path("add-5d"))


@pytest.mark.parametrize("fmt", ["fixed", "fixed_reversed"])
def test_answer_digit_j_is_visible_once_its_character_is_in_the_input(digit_tokenizer, fmt):
    """Six answer digits, one token each: at the position predicting answer token ``i`` the
    input shows answer characters ``0..i-1``. Most significant first, ``answer_digit_j`` is
    character ``5 - j``; reversed, it is character ``j``. A target with no place never is."""
    prompts = generate(TaskSpec(operation="add", digits=5, format=fmt, n=50, seed=0))
    targets = [f"answer_digit_{j}" for j in range(6)] + ["SC_2", "operand_a"]
    mask = answer_visible(prompts, digit_tokenizer, targets, 6)
    i = np.arange(6)
    for j in range(6):
        char = j if fmt == "fixed_reversed" else 5 - j
        np.testing.assert_array_equal(mask[j], i > char, err_msg=f"answer_digit_{j}")
    # SC_2 is place 2, like answer_digit_2; operand_a names no place
    np.testing.assert_array_equal(mask[6], mask[2])
    assert not mask[7].any()
