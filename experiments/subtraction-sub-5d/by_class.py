"""Exact match per borrow-cascade class, on the same number of prompts per class.

    python experiments/subtraction-sub-5d/by_class.py [--model zoo:sub-5d] [--n 2000]
    python experiments/subtraction-sub-5d/by_class.py --model zoo:addsub-5d

The task generator samples subtraction uniformly, where long borrow cascades are rare
(B3 ~0.5%, B4 ~0.05% of 5-digit prompts), so this builds each class B0..B4 (B5 needs 6
digits) with the zoo's constructor (half of each class negative) and scores it with
``evaluate``. The prompts are written in the model's own format (operands 0..99999,
zero-padded). Prints exact match per class, split by the answer's sign, and the accuracy of
each answer token (sign first, then the magnitude's digits, most significant first).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from arithinterp.methods import evaluate
from arithinterp.models import load_model
from arithinterp.tasks import PromptSet, model_task
from arithinterp.zoo.data import borrow_cascade_operands


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="zoo:sub-5d")
    parser.add_argument("--n", type=int, default=2000, help="prompts per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    spec = model_task(model, operation="sub", operand_range=(0, 99999))
    rng = np.random.default_rng(args.seed)
    print(f"{args.model}: {spec.operation} {spec.format}, {args.n} prompts per class")
    print(f"{'class':<6} {'exact':>6} {'positive':>9} {'negative':>9}  per answer token")
    pooled = []
    for cls in range(5):
        a, b = borrow_cascade_operands(rng, args.n, spec.operand_width, cls)
        prompts = PromptSet.from_operands(spec, a, b)
        assert (prompts.frame["complexity"] == f"B{cls}").all(), "the task's borrow class disagrees"
        res = evaluate(model, prompts, progress=False)
        exact = res.values.min("digit").to_numpy()
        neg = prompts.frame["negative"].to_numpy()
        digits = " ".join(f"{x:.4f}" for x in res.values.mean("prompt").to_numpy())
        print(f"B{cls:<5} {exact.mean():6.4f} {exact[~neg].mean():9.4f} {exact[neg].mean():9.4f}  {digits}")
        pooled.append(exact)
    print(f"{'all':<6} {np.concatenate(pooled).mean():6.4f}  (balanced over B0..B4)")


if __name__ == "__main__":
    main()
