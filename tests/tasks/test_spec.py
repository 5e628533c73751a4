"""TaskSpec: validation with useful messages, derived widths, seeds."""

from __future__ import annotations

import pytest

from arithinterp.errors import TaskError
from arithinterp.tasks import TaskSpec, generate


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"operation": "pow"}, "'add', 'sub', 'mul', 'floordiv', 'mod' or 'modadd'"),
        ({"digits": 0}, "digits must be a width 1..18"),
        ({"digits": (4, 2)}, "1 <= lo <= hi"),
        ({"operation": "mul", "digits": 10}, "mul supports operands up to 9 digits"),
        ({"operation": "modadd", "format": "fixed"}, "modadd needs format 'modular' or 'plain'"),
        ({"format": "modular"}, "'modular' ('{a} {b} =') is for operation 'modadd' only"),
        ({"format": "template", "template": "{a} plus {c}"}, "only {a} and {b} are allowed"),
        ({"format": "template", "template": "{a} plus"}, "{a} and {b} exactly once"),
        ({"template": "{a} plus {b}"}, "only used with format 'template'"),
        ({"operation": "sub", "sampling": "balance_carries"}, "defined for 'add' only"),
        ({"operation": "mul", "sampling": "balance_classes"}, "defined for 'add' and 'sub' only"),
        ({"sampling": "balance_carries", "operand_range": (0, 99)}, "needs 'digits'"),
        ({"operation": "mod", "operand_range": (0, 0)}, "nonzero divisor"),
        ({"n": 0}, "at least 1"),
        ({"few_shot": -1}, "few_shot"),
        ({"seed": -3}, "non-negative"),
        ({"colour": "red"}, "unknown field (valid fields: operation, digits"),
    ],
)
def test_invalid_specs_raise_task_error_naming_the_problem(fields, needle):
    with pytest.raises(TaskError, match="invalid TaskSpec") as info:
        TaskSpec(**fields)
    assert needle in str(info.value)
    with pytest.raises(TaskError) as info2:
        TaskSpec.parse(fields)
    assert needle in str(info2.value)


def test_parse_accepts_yaml_shaped_mappings_and_specs():
    spec = TaskSpec.parse({"operation": "add", "digits": [2, 4], "n": 5})
    assert spec.digits == (2, 4)
    assert TaskSpec.parse(spec) is spec
    with pytest.raises(TaskError, match="mapping"):
        TaskSpec.parse(["add"])


def test_spec_is_frozen():
    spec = TaskSpec()
    with pytest.raises(Exception, match="frozen"):
        spec.n = 5


@pytest.mark.parametrize(
    ("fields", "operand_width", "answer_width"),
    [
        ({"digits": 5}, 5, 6),
        ({"operation": "mul", "digits": 3}, 3, 6),
        ({"operation": "sub", "digits": 3}, 3, 3),
        ({"operation": "floordiv", "digits": (1, 3)}, 3, 3),
        ({"operation": "mod", "digits": 2}, 2, 2),
        ({"operation": "modadd", "p": 113}, 3, 3),
        ({"operation": "add", "operand_range": (0, 50)}, 2, 3),
    ],
)
def test_derived_widths(fields, operand_width, answer_width):
    spec = TaskSpec(**fields)
    assert spec.operand_width == operand_width
    assert spec.answer_width == answer_width


def test_divisor_domain_excludes_zero():
    ps = generate(TaskSpec(operation="floordiv", digits=1, n=400))
    assert (ps.frame.operand_b != 0).all()
    assert (ps.frame.operand_a == 0).any()  # the dividend may be 0


def test_modadd_uses_the_full_table_by_default():
    ps = generate(TaskSpec(operation="modadd", format="modular", p=7, n=300))
    assert ps.frame.operand_a.between(0, 6).all() and ps.frame.operand_b.between(0, 6).all()
    assert set(ps.frame.operand_a) == set(range(7))


def test_same_spec_same_prompts_and_hash_different_seed_differs():
    spec = TaskSpec(operation="mul", digits=3, n=50, seed=7, few_shot=2)
    one, two = generate(spec), generate(TaskSpec(**spec.model_dump()))
    assert one == two
    assert one.hash == two.hash and len(one.hash) == 16
    assert one.prompts == two.prompts and one.answers == two.answers
    other = generate(TaskSpec(operation="mul", digits=3, n=50, seed=8, few_shot=2))
    assert other.hash != one.hash and other.prompts != one.prompts


def test_hash_is_pinned_across_runs():
    # generated once and written down: a change means every stored dataset hash moves
    ps = generate(TaskSpec(digits=3, n=4, seed=0))
    assert ps.prompts == ("865+377=", "673+136=", "560+167=", "342+114=")
    assert ps.answers == ("1242", "809", "727", "456")
    assert ps.hash == "2d079423afb34056"
