"""A recipe with an impossible combination is a ConfigError naming the field, from the YAML file,
before training starts (issue 14's bad input)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from arithinterp.errors import ConfigError
from arithinterp.zoo.recipe import RECIPE_DIR, load_recipe
from arithinterp.zoo.train import train


def _shipped(name: str) -> dict[str, Any]:
    return yaml.safe_load((RECIPE_DIR / f"{name}.yaml").read_text())


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(recipe: dict) -> None:
        *parents, last = path.split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def _drop(path: str) -> Callable[[dict], None]:
    def edit(recipe: dict) -> None:
        *parents, last = path.split(".")
        node = recipe
        for part in parents:
            node = node[part]
        del node[last]

    return edit


#: (id, shipped recipe it starts from, the change, a fragment naming the field)
ROWS = [
    ("aux_loss_on_add", "add-5d", _set("aux_loss", {"weight": 1.0}), "aux_loss"),
    ("aux_loss_on_sub", "sub-5d", _set("aux_loss", {"weight": 1.0}), "aux_loss"),
    ("aux_loss_on_modadd", "modadd-113", _set("aux_loss", {"weight": 1.0}), "aux_loss"),
    ("aux_loss_layer_outside", "mul-3d-aux", _set("aux_loss.layer", 2), "aux_loss.layer 2"),
    ("aux_loss_weight_zero", "mul-3d-aux", _set("aux_loss.weight", 0), "aux_loss.weight"),
    ("answer_order_on_add", "add-5d", _set("task.answer_order", "msd"), "task.answer_order"),
    ("answer_order_on_sub", "sub-5d", _set("task.answer_order", "lsd"), "task.answer_order"),
    ("answer_order_unknown", "mul-3d", _set("task.answer_order", "middle"), "answer_order"),
    ("enrichment_on_mul", "mul-3d", _set("enrichment", {"batch_fraction": 0.5, "pair_fraction": 0.4}),
     "enrichment"),
    ("enrichment_on_modadd", "modadd-113", _set("enrichment", {"batch_fraction": 0.5, "pair_fraction": 0.4}),
     "enrichment"),
    ("ops_tok_max_result_small", "add-2d-tok",
     _set("task", {"kind": "ops_tok", "max_operand": 100, "max_result": 100, "train_fraction": 0.8}),
     "task.max_result"),
    ("sub_without_n_digits", "sub-5d", _drop("task.n_digits"), "['n_digits']"),
    ("modadd_without_p", "modadd-113", _drop("task.p"), "['p']"),
    ("mul_without_batch_size", "mul-3d", _drop("batch_size"), "batch_size"),
    ("lean_forward_two_layers", "add-5d", _set("lean_forward", True), "lean_forward"),
    ("heads_do_not_divide", "add-5d", _set("architecture.n_head", 5), "n_head 5"),
    ("unknown_task_kind", "add-5d", _set("task.kind", "pow"), "task.kind"),
    ("unknown_field", "add-5d", _set("task.bogus", 1), "bogus"),
]


@pytest.mark.parametrize(("base", "change", "field"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_impossible_recipe_names_the_field(tmp_path, base, change, field):
    recipe = copy.deepcopy(_shipped(base))
    load_recipe(RECIPE_DIR / f"{base}.yaml")  # the shipped one is fine
    change(recipe)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="does not validate") as err:
        load_recipe(path)
    assert field in str(err.value)
    out = tmp_path / "out"
    with pytest.raises(ConfigError):
        train(path, out, progress=False)  # before training starts: nothing is written
    assert not out.exists()
