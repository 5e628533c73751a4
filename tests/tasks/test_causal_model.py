"""The high-level causal models: the annotations they reproduce and their counterfactuals."""

import numpy as np
import pytest

from arithinterp.errors import MethodError, TaskError
from arithinterp.tasks import TaskSpec, causal_model, generate

SPECS = [
    {"operation": "add", "digits": 5, "format": "fixed"},
    {"operation": "sub", "digits": 3, "format": "fixed"},
    {"operation": "mul", "digits": 3, "format": "fixed_reversed"},
    {"operation": "modadd", "format": "modular"},
]


@pytest.mark.parametrize("fields", SPECS, ids=lambda f: f["operation"])
def test_unintervened_model_equals_the_annotations(fields):
    prompts = generate(TaskSpec(n=400, seed=1, **fields))
    cm = causal_model(prompts.spec)
    values = cm.run(prompts)
    shared = [k for k in cm.names if k in prompts.frame]
    assert len(shared) >= 5 if fields["operation"] != "modadd" else len(shared) == 3
    for name in shared:
        np.testing.assert_array_equal(values[name], prompts.frame[name].to_numpy(np.int64), err_msg=name)
    np.testing.assert_array_equal(values["answer"], prompts.frame["answer"].to_numpy())


def test_addition_counterfactuals_by_hand():
    spec = TaskSpec(operation="add", digits=2, format="fixed")
    cm = causal_model(spec)
    from arithinterp.tasks import PromptSet

    base, source = PromptSet.from_operands(spec, [15, 44], [23, 11]), PromptSet.from_operands(spec, [19, 70], [23, 80])
    # 15+23 with the carry into the tens from 19+23 (1): 48; 44+11 with the carry of 70+80 (0): 55
    np.testing.assert_array_equal(cm.counterfactual(base, source, "ones_carry"), [48, 55])
    # the tens digit of a from the source: 1 (unchanged), 7
    np.testing.assert_array_equal(cm.counterfactual(base, source, "op1_tens"), [38, 85])
    np.testing.assert_array_equal(cm.counterfactual(base, source, "carry_in_2"), [38, 155])
    assert cm.answer_texts(np.array([48, 155])) == ["048", "155"]


def test_multiplication_running_sum_intervention():
    spec = TaskSpec(operation="mul", digits=2, format="fixed_reversed")
    from arithinterp.tasks import PromptSet

    cm = causal_model(spec)
    ps = PromptSet.from_operands(spec, [12], [34])  # 408: s_0 = 8, s_1 = 10, c_hat_1 = 10
    assert cm.values(ps, "c_hat_1")[0] == 10
    out = cm.run(ps, {"c_hat_0": [18]})  # one more carry out of the units column
    assert out["answer"][0] == 418


def test_pairs_change_the_variable_and_the_answer():
    prompts = generate(TaskSpec(operation="sub", digits=3, format="fixed", n=200))
    cm = causal_model(prompts.spec)
    pairs = cm.make_pairs(prompts, "borrow_1", seed=2)
    assert len(pairs) + pairs.n_dropped == 200
    assert cm.changes(pairs, "borrow_1").all()
    cf = cm.counterfactual(pairs.clean, pairs.corrupt, "borrow_1")
    assert (cf != pairs.clean.frame["answer"].to_numpy()).all()


def test_unknown_variable_and_operation():
    cm = causal_model(TaskSpec(operation="add", digits=2))
    with pytest.raises(MethodError, match="no variable 'borrow_0'.*carry_in_1"):
        cm.resolve("borrow_0")
    with pytest.raises(TaskError, match="no causal model for operation 'mod'"):
        causal_model(TaskSpec(operation="mod", digits=2))
