"""Models carry their format: a zoo card's recipe task becomes ``Model.default_task(s)``, whose
prompts tokenize to exactly the token layout the model was trained on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from arithinterp.errors import ConfigError, TaskError
from arithinterp.methods.registry import RunContext
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, model_task, tokenize
from arithinterp.zoo.data import OPS_TOK_OPERATORS, TaskFormat
from arithinterp.zoo.default_tasks import (
    OPS_TOK_OPERATIONS,
    model_dir_tasks,
    recipe_tasks,
    spec_tasks,
)
from arithinterp.zoo.modeling import build_tokenizer_for
from arithinterp.zoo.recipe import TaskSpec as RecipeTask
from arithinterp.zoo.registry import list_zoo, zoo_path
from tests.conftest import build_tiny_hf

ADD, SUB = TaskSpec(operation="add", format="fixed", digits=5), TaskSpec(operation="sub", format="fixed", digits=5)

#: recipe task block -> the default tasks it must give
TABLE = [
    ({"kind": "add", "n_digits": 5}, (ADD,)),
    ({"kind": "sub", "n_digits": 5}, (SUB,)),
    ({"kind": "addsub", "n_digits": 5}, (ADD, SUB)),
    ({"kind": "mul", "n_digits": 3}, (TaskSpec(operation="mul", format="fixed_reversed", digits=3),)),
    ({"kind": "mul", "n_digits": 3, "answer_order": "lsd"},
     (TaskSpec(operation="mul", format="fixed_reversed", digits=3),)),
    ({"kind": "mul", "n_digits": 3, "answer_order": "msd"}, (TaskSpec(operation="mul", format="fixed", digits=3),)),
    ({"kind": "modadd", "p": 113, "train_fraction": 0.3}, (TaskSpec(operation="modadd", format="modular", p=113),)),
    ({"kind": "add_tok", "max_operand": 100, "train_fraction": 0.8},
     (TaskSpec(operation="add", format="plain", operand_range=(0, 99)),)),
    ({"kind": "ops_tok", "max_operand": 100, "max_result": 999, "train_fraction": 0.8}, (
        TaskSpec(operation="add", format="plain", operand_range=(0, 99)),
        TaskSpec(operation="sub", format="plain", operand_range=(0, 99), allow_negative=False),
        TaskSpec(operation="mul", format="plain", operand_range=(0, 31)),
        TaskSpec(operation="floordiv", format="plain", operand_range=(0, 99)),
    )),
]


@pytest.mark.parametrize(("task", "expected"), TABLE, ids=[f"{t['kind']}-{i}" for i, (t, _) in enumerate(TABLE)])
def test_recipe_task_to_task_specs(task, expected):
    assert recipe_tasks(RecipeTask(**task).model_dump(mode="json")) == expected


def test_ops_tok_operators_in_the_zoo_order():
    assert OPS_TOK_OPERATIONS == OPS_TOK_OPERATORS


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="'pow'"):
        recipe_tasks({"kind": "pow", "n_digits": 3})


LAYOUTS = [
    {"kind": "add", "n_digits": 5}, {"kind": "add", "n_digits": 2}, {"kind": "sub", "n_digits": 5},
    {"kind": "sub", "n_digits": 1}, {"kind": "addsub", "n_digits": 3}, {"kind": "mul", "n_digits": 3},
    {"kind": "mul", "n_digits": 2, "answer_order": "msd"}, {"kind": "modadd", "p": 113, "train_fraction": 0.3},
    {"kind": "add_tok", "max_operand": 100, "train_fraction": 0.8},
    {"kind": "ops_tok", "max_operand": 100, "max_result": 999, "train_fraction": 0.8},
]


@pytest.mark.parametrize("task", LAYOUTS, ids=[f"{t['kind']}-{t.get('n_digits', '')}" for t in LAYOUTS])
def test_default_prompts_tokenize_to_the_zoo_layout(task):
    """generate(default task) + the model's tokenizer == the training data's token ids (prompt + answer)."""
    recipe_task = RecipeTask(**task)
    fmt = TaskFormat.from_task(recipe_task)
    tok = build_tokenizer_for(fmt)
    for index, spec in enumerate(recipe_tasks(recipe_task.model_dump(mode="json"))):
        prompts = generate(spec.model_copy(update={"n": 64}))
        tokens = tokenize(prompts, tok, answer="multi").tokens.numpy()
        a, b = prompts.frame["operand_a"].to_numpy(), prompts.frame["operand_b"].to_numpy()
        op = None if len(fmt.ops) < 2 else np.full(len(a), fmt.ops.index(spec.operation))
        assert index == 0 or op is not None
        np.testing.assert_array_equal(tokens, fmt.sequences(a, b, op))


def test_sub_answers_carry_a_sign_then_n_digits():
    prompts = generate(SUB.model_copy(update={"n": 200}))
    assert all(len(ans) == 6 and ans[0] in "+-" for ans in prompts.answers)
    assert {ans[0] for ans in prompts.answers} == {"+", "-"}
    assert len(prompts.prompts[0]) == 12


def test_shipped_cards_give_their_recipe_tasks():
    entries = list_zoo()
    assert entries
    for entry in entries:
        card = json.loads((entry.path / "card.json").read_text())
        assert model_dir_tasks(entry.path) == recipe_tasks(card["recipe"]["task"]), entry.name
        assert spec_tasks(f"zoo:{entry.name}") == model_dir_tasks(entry.path)


def test_loaded_zoo_model_carries_its_task_and_others_do_not(tmp_path):
    model = load_model("zoo:modadd-113")
    assert model.default_task == TaskSpec(operation="modadd", format="modular", p=113)
    assert model.default_tasks == (model.default_task,)
    plain = load_model(str(build_tiny_hf(tmp_path / "tiny", "gpt2")))
    assert plain.default_task is None and plain.default_tasks == ()
    assert spec_tasks(str(tmp_path / "tiny")) == () and spec_tasks("gpt2") == ()


def test_a_copied_zoo_dir_keeps_its_task_and_a_damaged_card_warns(tmp_path):
    copy = shutil.copytree(zoo_path("add-2d-tok"), tmp_path / "mine")
    assert load_model(str(copy)).default_task == TaskSpec(operation="add", format="plain", operand_range=(0, 99))
    (copy / "card.json").write_text("{not json")
    with pytest.warns(UserWarning, match="without a default task"):
        assert model_dir_tasks(copy) == ()


class _Fake:
    """A model-like object with two default tasks (an ``addsub`` model)."""

    name = spec = "fake-addsub"
    default_tasks = (ADD, SUB)
    default_task = ADD


def test_generate_from_a_model():
    model = load_model("zoo:add-5d")
    assert generate(model=model, n=8, seed=3) == generate(ADD.model_copy(update={"n": 8, "seed": 3}))
    assert generate(model).spec == ADD  # a Model in the first place works too
    assert generate(ADD, n=4).spec == ADD.model_copy(update={"n": 4})  # fields replace a spec's too
    assert model_task(_Fake(), operation="sub", n=5) == SUB.model_copy(update={"n": 5})
    assert model_task(_Fake(), n=5).operation == "add"


def test_generate_without_a_task_says_what_to_pass(tmp_path):
    with pytest.raises(TaskError, match="generate needs a task"):
        generate()
    plain = load_model(str(build_tiny_hf(tmp_path / "tiny", "gpt2")))
    with pytest.raises(TaskError, match="has no default task.*TaskSpec"):
        generate(model=plain)
    with pytest.raises(TaskError, match="bogus"):
        generate(model=load_model("zoo:add-5d"), bogus=1)


def test_run_context_defaults_to_the_models_task(tmp_path):
    model = load_model("zoo:modadd-113")
    ctx = RunContext(model=model)
    assert ctx.spec == model.default_task and ctx.prompts == generate(model.default_task)
    given = generate(model=model, n=7)
    assert RunContext(model=model, prompts=given).spec == given.spec
    plain = load_model(str(build_tiny_hf(tmp_path / "tiny", "gpt2")))
    with pytest.raises(ConfigError, match="no default task.*pass spec="):
        RunContext(model=plain)


def test_registered_methods_run_on_the_models_own_task():
    """What the pipeline and the report do with a step that names no task: RunContext(model=...)."""
    from arithinterp.methods.registry import get_method

    model = load_model("zoo:modadd-113")
    ctx = RunContext(model=model, spec=model.default_task.model_copy(update={"n": 16}), progress=False)
    assert get_method("evaluate").call(ctx).accuracy == 1.0
    lens = get_method("logit_lens").call(RunContext(model=model, progress=False), {"k": 2})
    assert lens.meta.dataset_hash == generate(model=model).hash
