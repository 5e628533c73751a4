"""Every shipped zoo model loads from safetensors alone and is as accurate as its card says.

The headline accuracy is re-measured on a fresh seeded sample; it must agree
with the card within sampling error (4 standard errors, with the variance
floored at 1/n so that a card claiming 100% tolerates a handful of misses).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from transformers import AutoTokenizer, GPT2LMHeadModel

from arithinterp.zoo.data import TaskFormat
from arithinterp.zoo.evaluate import pair_sequences, score, task_pairs, uniform_problems
from arithinterp.zoo.recipe import Recipe, recipe_names
from arithinterp.zoo.registry import ZOO_DIR

N_SAMPLE = 3000
MAX_MODEL_BYTES = 5 * 2**20
MAX_ZOO_BYTES = 30 * 2**20


def _shipped(name: str):
    path = ZOO_DIR / name
    if not (path / "model.safetensors").is_file() or not (path / "card.json").is_file():
        pytest.skip(
            f"{name} is not shipped yet: run `arithinterp train {name}` (or copy a finished "
            f"run into {path}) and commit it"
        )
    return path, json.loads((path / "card.json").read_text())


def _tolerance(p: float, n: int) -> float:
    return 4 * math.sqrt(max(p * (1 - p), 1 / n) / n)


@pytest.fixture(params=recipe_names())
def shipped(request):
    return _shipped(request.param)


def test_loads_from_safetensors_only(shipped):
    path, card = shipped
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
    model = GPT2LMHeadModel.from_pretrained(path, use_safetensors=True)
    cfg = model.config
    assert cfg.model_type == "gpt2"
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0
    fmt = TaskFormat.from_task(Recipe.model_validate(card["recipe"]).task)
    tok = AutoTokenizer.from_pretrained(path)
    example = card["format"]["example_prompt"]
    assert tok(example)["input_ids"] == fmt.prompt_ids(*_operands(fmt, example))[0].tolist()
    for op, (prompt, answer) in enumerate(card["format"].get("examples", {}).values()):
        a, b, _ = _operands(fmt, prompt)
        assert tok(prompt + answer)["input_ids"] == fmt.sequences(a, b, [op])[0].tolist()
    for f in ("tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (path / f).is_file()
    assert (path / "model.safetensors").stat().st_size <= MAX_MODEL_BYTES


def _operands(fmt: TaskFormat, prompt: str):
    import re

    a, b = (int(x) for x in re.findall(r"\d+", prompt)[:2])
    op = None
    if len(fmt.ops) > 1:  # the operator symbol between the operands
        symbol = re.sub(r"[\d=\s]", "", prompt)
        op = [{"add": "+", "sub": "-", "mul": "*", "floordiv": "/"}[o] for o in fmt.ops].index(symbol)
        op = np.array([op])
    return np.array([a]), np.array([b]), op


def test_headline_accuracy_reproduces(shipped):
    path, card = shipped
    recipe = Recipe.model_validate(card["recipe"])
    fmt = TaskFormat.from_task(recipe.task)
    model = GPT2LMHeadModel.from_pretrained(path, use_safetensors=True)
    rng = np.random.default_rng(20240917)
    if fmt.kind in ("modadd", "add_tok", "ops_tok"):
        _, test = task_pairs(fmt, recipe.task.train_fraction, recipe.seed)
        problems = test[rng.choice(len(test), size=min(N_SAMPLE, len(test)), replace=False)]
    else:
        problems = uniform_problems(rng, fmt, N_SAMPLE)
    measured = score(model, fmt, pair_sequences(fmt, problems))["exact_match"]
    claimed = card["headline"]["value"]
    assert abs(measured - claimed) <= _tolerance(claimed, len(problems)), (measured, claimed)


def test_modadd_checkpoints_match_their_metrics():
    path, card = _shipped("modadd-113")
    recipe = Recipe.model_validate(card["recipe"])
    fmt = TaskFormat.from_task(recipe.task)
    _, test = task_pairs(fmt, recipe.task.train_fraction, recipe.seed)
    assert card["checkpoints"][-1]["phase"] == "final"
    for entry in card["checkpoints"]:
        ckpt = path / "checkpoints" / f"step-{entry['step']}"
        metrics = json.loads((ckpt / "metrics.json").read_text())
        model = GPT2LMHeadModel.from_pretrained(ckpt, use_safetensors=True)
        measured = score(model, fmt, fmt.sequences(test[:, 0], test[:, 1]))["exact_match"]
        assert measured == pytest.approx(metrics["test_accuracy"], abs=1e-4)


def test_zoo_size_budget():
    total = (
        sum(f.stat().st_size for f in ZOO_DIR.rglob("*") if f.is_file()) if ZOO_DIR.is_dir() else 0
    )
    assert total <= MAX_ZOO_BYTES
