"""A score at chance level warns and names the likely cause (ChanceAccuracyWarning)."""

from __future__ import annotations

import warnings

import pytest

from arithinterp.errors import ChanceAccuracyWarning
from arithinterp.methods import EvalResult, evaluate
from arithinterp.methods.chance import task_differences
from arithinterp.models import load_model
from arithinterp.results import Result
from arithinterp.tasks import TaskSpec, generate
from tests.conftest import build_tiny_hf


@pytest.fixture(scope="module")
def modadd():
    return load_model("zoo:modadd-113")


def test_the_plain_format_on_modadd_warns_and_names_the_format(modadd, tmp_path):
    """The trap of issue 14: the plain format scores ~0 on zoo:modadd-113, and now says why."""
    prompts = generate(TaskSpec(operation="modadd", n=24))
    with pytest.warns(ChanceAccuracyWarning, match=r"format='plain' here, the model expects format='modular'"):
        res = evaluate(modadd, prompts, progress=False)
    assert res.accuracy < 0.05
    (message,) = res.warnings
    assert "generate(model=model" in message and "zoo:modadd-113" in message
    assert res.summary()["warnings"] == [message]
    res.save(tmp_path / "eval")
    assert Result.load(tmp_path / "eval").warnings == [message]  # kept with the result


def test_the_models_own_format_does_not_warn(modadd):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChanceAccuracyWarning)
        res = evaluate(modadd, generate(model=modadd, n=24), progress=False)
        assert evaluate(modadd, progress=False).accuracy == 1.0  # prompts=None: the model's own task
    assert res.accuracy == 1.0 and res.warnings == [] and "warnings" not in res.summary()


def test_other_digits_are_named():
    model = load_model("zoo:add-5d")
    with pytest.warns(ChanceAccuracyWarning, match=r"digits=3 here, the model expects digits=5"):
        evaluate(model, generate(TaskSpec(operation="add", digits=3, format="fixed", n=16)), progress=False)


def test_a_weak_model_on_its_own_task_is_not_called_chance():
    """zoo:mul-3d gets few products right but most digits: weak, not at chance."""
    model = load_model("zoo:mul-3d")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChanceAccuracyWarning)
        res = evaluate(model, generate(model=model, n=32), progress=False)
    assert res.accuracy < 0.05 and float(res.values.mean()) > 0.5


def test_a_model_without_a_card_gets_the_generic_causes(tmp_path):
    model = load_model(str(build_tiny_hf(tmp_path / "tiny", "gpt2")))  # random weights
    with pytest.warns(ChanceAccuracyWarning, match=r"no default task.*format='fixed'.*digits=2.*context holds"):
        res = evaluate(model, generate(TaskSpec(digits=2, format="fixed", n=8)), progress=False)
    assert isinstance(res, EvalResult) and res.warnings


ADD = TaskSpec(operation="add", digits=5, format="fixed")
TOK = TaskSpec(operation="add", operand_range=(0, 99), format="plain")
DIFFS = [
    (ADD, (ADD,), []),
    (ADD.model_copy(update={"n": 7, "seed": 3}), (ADD,), []),
    (TaskSpec(operation="add", digits=(1, 5), format="fixed"), (ADD,), []),
    (TaskSpec(operation="add", digits=5, format="plain"), (ADD,), ["format='plain' here, the model expects format='fixed'"]),
    (TaskSpec(operation="add", digits=6, format="fixed"), (ADD,), ["digits=6 here, the model expects digits=5"]),
    (TaskSpec(operation="mul", digits=5, format="fixed"), (ADD,), ["operation='mul' here, the model was trained on operation='add'"]),
    (TaskSpec(operation="sub", digits=5, format="fixed", allow_negative=False),
     (ADD, TaskSpec(operation="sub", digits=5, format="fixed")),
     ["allow_negative=False here, the model expects allow_negative=True"]),
    (TaskSpec(operation="add", digits=5, format="fixed", few_shot=2), (ADD,), ["few_shot=2 here, the model expects few_shot=0"]),
    (TaskSpec(operation="add", operand_range=(0, 150)), (TOK,), ["operands 0..150 here, the model expects operand_range=(0, 99)"]),
    (TaskSpec(operation="add", digits=2), (TOK,), []),
    (TaskSpec(operation="modadd", p=97, format="modular"), (TaskSpec(operation="modadd", format="modular"),),
     ["p=97 here, the model expects p=113"]),
    (ADD, (), []),
]


@pytest.mark.parametrize(("spec", "tasks", "expected"), DIFFS, ids=[str(i) for i in range(len(DIFFS))])
def test_task_differences(spec, tasks, expected):
    assert task_differences(spec, tasks) == expected
