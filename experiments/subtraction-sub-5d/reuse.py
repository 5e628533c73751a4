"""Does the mixed model read a borrow where it reads a carry? Probe transfer on addsub-5d.

    python experiments/subtraction-sub-5d/reuse.py [--model zoo:addsub-5d] [--n 2000]

``12345+67890=`` and ``12345-67890=`` put the same tokens at the same positions, and both
answers are 6 tokens (the sum's digits; a sign, then the difference's), so position 16 - i
predicts answer digit i (place 10^i) in both. There the digit needs the carry into column i
(``carry_in_i``, on + prompts) or the borrow into it (``borrow_{i-1}``, on - prompts).

For each column i = 1..4 and residual site, a logistic probe is fitted on one operator's
prompts and scored held out on its own operator and on the other one (labels: carry resp.
borrow into column i). A model that reuses its carry feature for borrows transfers (an
accuracy far from 0.5; below 0.5 means the same direction with the opposite sign). Beside
it: the cosine between the two probes' directions, the cosine between carry probes fitted on
two disjoint halves (how similar two fits of the *same* feature come out), and between the
carry into column i and the borrow into another column (a floor).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from arithinterp.methods import LinearProbe
from arithinterp.methods.probe_sweep import cache_resid, resid_sites
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, tokenize


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def _streams(model, op: str, n: int, seed: int, positions: list[int], sites):
    spec = TaskSpec(operation=op, digits=5, operand_range=(0, 99999), format="fixed", n=n, seed=seed)
    prompts = generate(spec)
    tokens = tokenize(prompts, model.tokenizer, answer="multi").tokens
    return prompts.frame, cache_resid(model, tokens, sites, positions).double()  # [site, pos, n, d]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="zoo:addsub-5d")
    parser.add_argument("--n", type=int, default=2000, help="prompts per operator")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    sites, labels = resid_sites(model)
    positions = [16 - i for i in range(1, 5)]
    add, x_add = _streams(model, "add", args.n, args.seed, positions, sites)
    sub, x_sub = _streams(model, "sub", args.n, args.seed + 1, positions, sites)
    half = args.n // 2
    tr, te = np.arange(3 * args.n // 4), np.arange(3 * args.n // 4, args.n)
    print(f"{args.model}: {args.n} prompts per operator, {len(tr)} train / {len(te)} held out")
    print(f"{'column':<7} {'site':<8} {'carry':>6} {'borrow':>7} {'c->b':>6} {'b->c':>6} "
          f"{'cos(c,b)':>9} {'cos(c,c)':>9} {'cos(c,b other)':>15}")
    for k, i in enumerate(range(1, 5)):
        yc = add[f"carry_in_{i}"].to_numpy()
        yb = sub[f"borrow_{i - 1}"].to_numpy()
        other = sub[f"borrow_{i % 4}"].to_numpy()  # the borrow into another column
        xa, xs = x_add[:, k], x_sub[:, k]  # [site, n, d]
        carry = LinearProbe().fit(xa[:, tr], yc[tr])
        borrow = LinearProbe().fit(xs[:, tr], yb[tr])
        c1 = LinearProbe().fit(xa[:, :half], yc[:half]).coef_[:, 0]
        c2 = LinearProbe().fit(xa[:, half:], yc[half:]).coef_[:, 0]
        bo = LinearProbe().fit(xs[:, tr], other[tr]).coef_[:, 0]
        scores = (carry.score(xa[:, te], yc[te]), borrow.score(xs[:, te], yb[te]),
                  carry.score(xs[:, te], yb[te]), borrow.score(xa[:, te], yc[te]))
        for s, label in enumerate(labels):
            cc, cb = carry.coef_[s, 0], borrow.coef_[s, 0]
            print(f"{i:<7} {label:<8} " + " ".join(f"{v[s]:6.3f}" for v in scores)
                  + f" {_cos(cc, cb):9.3f} {_cos(c1[s], c2[s]):9.3f} {_cos(cc, bo[s]):15.3f}")


if __name__ == "__main__":
    main()
