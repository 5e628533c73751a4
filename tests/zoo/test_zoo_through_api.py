"""The zoo through the public API: both backends, the tasks module and evaluate.

The zoo's own tests score models with the training code's data generator;
these re-measure the cards with the independent task generator and the
``evaluate`` method, so the two implementations of the formats check each
other, and check that both backends load every model and agree.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from arithinterp.methods import evaluate
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, tokenize
from arithinterp.zoo.registry import ZOO_DIR

ZOO = ["add-5d", "add-5d-1L", "mul-3d", "modadd-113", "add-2d-tok", "add-2d", "mul-3d-msd"]

SPECS = {
    "add-5d": dict(operation="add", digits=5, format="fixed"),
    "add-5d-1L": dict(operation="add", digits=5, format="fixed"),
    "mul-3d": dict(operation="mul", digits=3, format="fixed_reversed"),
    "mul-3d-msd": dict(operation="mul", operand_range=(0, 999), format="fixed"),  # as the card: 000..999
    "modadd-113": dict(operation="modadd", p=113, format="modular"),
    "add-2d-tok": dict(operation="add", operand_range=(0, 99), format="plain"),
    "add-2d": dict(operation="add", operand_range=(0, 99), format="fixed"),
}


def _card(name: str) -> dict:
    return json.loads((ZOO_DIR / name / "card.json").read_text())


def _within(measured: float, claimed: float, n: int) -> bool:
    return abs(measured - claimed) <= 4 * math.sqrt(max(claimed * (1 - claimed), 1 / n) / n)


@pytest.mark.parametrize("name", ZOO)
def test_both_backends_load_and_agree(name):
    prompts = generate(TaskSpec(n=16, seed=5, **SPECS[name]))
    tl = load_model(f"zoo:{name}", backend="transformer_lens")
    ns = load_model(f"zoo:{name}", backend="nnsight")
    tokens = tokenize(prompts, tl.tokenizer).tokens
    assert torch.equal(tokens, tokenize(prompts, ns.tokenizer).tokens)
    tl_logits, ns_logits = tl.logits(tokens), ns.logits(tokens)
    # float32 agreement on the logits' scale: the bridge computes LayerNorm by its own
    # formula; modadd-113 (linear "centre" norms, logits up to ~70) differs by 3e-4.
    scale = max(1.0, float(ns_logits.abs().max()) / 10)
    torch.testing.assert_close(tl_logits, ns_logits, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("name", ["add-5d", "add-5d-1L", "mul-3d", "add-2d", "mul-3d-msd"])
def test_card_accuracy_reproduces_through_tasks_and_evaluate(name):
    card = _card(name)
    n = 2000
    res = evaluate(load_model(f"zoo:{name}"), generate(TaskSpec(n=n, seed=11, **SPECS[name])), progress=False)
    assert _within(res.accuracy, card["headline"]["value"], n), (res.accuracy, card["headline"])
    claimed_digits = card["metrics"]["uniform"]["per_token"]
    for digit, claimed in enumerate(claimed_digits):
        assert _within(float(res.per_digit.iloc[digit]), claimed, n), (digit, res.per_digit.iloc[digit], claimed)


def test_one_layer_adder_fails_on_long_cascades():
    """Quirke & Barez: a 1-layer adder handles S0-S2 and fails on long carry cascades."""
    model = load_model("zoo:add-5d-1L")
    prompts = generate(TaskSpec(operation="add", digits=5, format="fixed", n=1200, seed=3,
                                sampling="balance_classes"))
    per_class = evaluate(model, prompts, progress=False).per_class
    assert min(per_class["S0"], per_class["S1"], per_class["S2"]) > 0.95
    assert max(per_class["S3"], per_class["S4"], per_class["S5"]) < 0.9
    two_layer = evaluate(load_model("zoo:add-5d"), prompts, progress=False).per_class
    assert two_layer.min() > 0.99


@pytest.mark.parametrize("name", ["modadd-113", "add-2d-tok"])
def test_single_token_models_answer_the_whole_grid(name):
    card = _card(name)
    spec = SPECS[name]
    n = 113 * 113 if name == "modadd-113" else 100 * 100
    res = evaluate(load_model(f"zoo:{name}"), generate(TaskSpec(n=n, seed=0, **spec)), progress=False)
    train, test = card["metrics"]["train"], card["metrics"]["test"]
    expected = (train["accuracy"] * train["n"] + test["accuracy"] * test["n"]) / (train["n"] + test["n"])
    assert res.accuracy >= expected - 0.01
