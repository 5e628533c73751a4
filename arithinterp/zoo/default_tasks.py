"""The prompt format a zoo model was trained on, as :class:`arithinterp.tasks.TaskSpec`.

A zoo model's ``card.json`` records its recipe, and the recipe's ``task`` block fixes the
token layout (:class:`arithinterp.zoo.data.TaskFormat`). :func:`recipe_tasks` maps that block
to the specs whose prompts tokenize to the same layout, so that ``generate(model=model)``
writes what the model reads:

=========  ===========================================================================
kind       default tasks
=========  ===========================================================================
add        ``add``, format ``fixed``, ``digits=n_digits`` (``00123+45678=`` -> ``046801``)
sub        ``sub``, format ``fixed``, ``digits=n_digits`` (``00123-45678=`` -> ``-45555``)
addsub     the ``add`` task, then the ``sub`` task
mul        ``mul``, format ``fixed_reversed`` (``answer_order: msd``: ``fixed``), ``digits=n_digits``
modadd     ``modadd``, format ``modular``, ``p``
add_tok    ``add``, format ``plain``, ``operand_range=(0, max_operand - 1)``
ops_tok    ``add``, ``sub`` (no negative results), ``mul`` (operands up to
           ``isqrt(max_result)``, so every product is one token) and ``floordiv``,
           format ``plain``, operands below ``max_operand``
=========  ===========================================================================

Digit tasks use operands of exactly ``n_digits`` digits (``TaskSpec(digits=n)``), zero-padded
as the zoo pads them; the zoo's training data also has shorter operands, which the same
spec reaches with ``digits=(1, n)``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from arithinterp.errors import ArithInterpError, ConfigError
from arithinterp.tasks.spec import TaskSpec

__all__ = ["CARD_FILE", "OPS_TOK_OPERATIONS", "card_tasks", "model_dir_tasks", "recipe_tasks", "spec_tasks"]

CARD_FILE = "card.json"

#: The operators of ``ops_tok`` in the zoo's index order (:data:`arithinterp.zoo.data.OPS_TOK_OPERATORS`).
OPS_TOK_OPERATIONS: tuple[str, ...] = ("add", "sub", "mul", "floordiv")


def _int(task: Mapping[str, Any], key: str) -> int:
    value = task.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"the recipe's task of kind {task.get('kind')!r} needs an integer {key}, got {value!r}")
    return value


def recipe_tasks(task: Mapping[str, Any]) -> tuple[TaskSpec, ...]:
    """The task specs of a recipe's ``task`` block (``card["recipe"]["task"]``), the main one first.

    Raises :class:`ConfigError` for a kind this version does not know.
    """
    kind = task.get("kind")
    if kind in ("add", "sub", "mul"):
        n = _int(task, "n_digits")
        fmt = "fixed"
        if kind == "mul" and task.get("answer_order") != "msd":
            fmt = "fixed_reversed"  # the zoo writes products least significant digit first
        return (TaskSpec(operation=kind, format=fmt, digits=n),)
    if kind == "addsub":
        n = _int(task, "n_digits")
        return tuple(TaskSpec(operation=op, format="fixed", digits=n) for op in ("add", "sub"))
    if kind == "modadd":
        return (TaskSpec(operation="modadd", format="modular", p=_int(task, "p")),)
    if kind == "add_tok":
        return (TaskSpec(operation="add", format="plain", operand_range=(0, _int(task, "max_operand") - 1)),)
    if kind == "ops_tok":
        top = _int(task, "max_operand") - 1
        ranges = {"mul": (0, min(top, math.isqrt(_int(task, "max_result"))))}
        return tuple(
            TaskSpec(operation=op, format="plain", operand_range=ranges.get(op, (0, top)),
                     allow_negative=op != "sub")
            for op in OPS_TOK_OPERATIONS
        )
    raise ConfigError(
        f"zoo task kind {kind!r} has no default task in this version of arithinterp; "
        "pass a TaskSpec"
    )


def card_tasks(card: Mapping[str, Any]) -> tuple[TaskSpec, ...]:
    """The task specs of a model card (its recipe's task)."""
    try:
        task = card["recipe"]["task"]
    except (KeyError, TypeError):
        raise ConfigError("the model card has no recipe.task") from None
    if not isinstance(task, Mapping):
        raise ConfigError(f"the model card's recipe.task must be a mapping, got {type(task).__name__}")
    return recipe_tasks(task)


def model_dir_tasks(path: str | Path) -> tuple[TaskSpec, ...]:
    """The default tasks of the model directory ``path``: from its ``card.json``, or ``()``.

    A directory without a card (any Hugging Face model) has none. A card this version cannot
    read gives ``()`` and a warning: the model still loads, it just carries no format.
    """
    card_file = Path(path) / CARD_FILE
    if not card_file.is_file():
        return ()
    try:
        return card_tasks(json.loads(card_file.read_bytes().decode("utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ArithInterpError) as err:
        warnings.warn(f"{card_file}: {err}; the model loads without a default task", UserWarning, stacklevel=2)
        return ()


def spec_tasks(model: str) -> tuple[TaskSpec, ...]:
    """The default tasks of a model spec (``"zoo:add-5d"``, a directory) without loading it;
    ``()`` for a spec with no card (a hub name, a directory without ``card.json``)."""
    if model.startswith("zoo:"):
        from arithinterp.zoo.registry import zoo_path

        return model_dir_tasks(zoo_path(model[len("zoo:"):]))
    path = Path(model).expanduser()
    return model_dir_tasks(path) if path.is_dir() else ()
