"""Does the mixed model read a borrow where it reads a carry? Probe transfer on addsub-5d.

    python experiments/subtraction-sub-5d/reuse.py [--model zoo:addsub-5d] [--n 2000]

``12345+67890=`` and ``12345-67890=`` put the same tokens at the same positions, and both
answers are 6 tokens (the sum's digits; a sign, then the difference's), so position 16 - i
predicts answer digit i (place 10^i) in both. There the digit needs the carry into column i
(``carry_in_i``, on + prompts) or the borrow into it (``borrow_{i-1}``, on - prompts).

For each column i = 1..4 and residual site, a logistic probe is fitted on one operator's
prompts and scored held out on its own operator and on the other one (labels: carry resp.
borrow into column i: of max - min, which the magnitude's digit uses, and, for the carry probe,
also ``ab_borrow``, that of a - b in prompt order). A model that reuses its carry feature for
borrows transfers (an accuracy far from 0.5; below 0.5 means the same direction with the
opposite sign). Beside
it: the cosine between the two probes' directions, the cosine between carry probes fitted on
two disjoint halves (how similar two fits of the *same* feature come out), and between the
carry into column i and the borrow into another column (a floor).

A second table does the same where column j's two digits first meet (b_j's token), for the
paper's layer-0 head that computes make-carry and borrow-one together: SC_j on + prompts
against MB_j (and GT_j) on - prompts.
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


def _transfer(xa, ya, xs, ys, tr, te):
    """A probe of ``ya`` on the + streams ``xa [site, n, d]`` and one of ``ys`` on the - streams:
    held-out accuracy on their own operator and on the other, and the probes."""
    on_add = LinearProbe().fit(xa[:, tr], ya[tr])
    on_sub = LinearProbe().fit(xs[:, tr], ys[tr])
    scores = (on_add.score(xa[:, te], ya[te]), on_sub.score(xs[:, te], ys[te]),
              on_add.score(xs[:, te], ys[te]), on_sub.score(xa[:, te], ya[te]))
    return scores, on_add, on_sub


def carry_borrow_table(add, x_add, sub, x_sub, labels, tr, te) -> None:
    """Carry into column i on + prompts against the borrow into it on - prompts, where digit i
    is predicted (``x_*[:, k]`` is position 16 - i for k = i - 1)."""
    half = len(add) // 2
    print(f"{'column':<7} {'site':<8} {'carry':>6} {'borrow':>7} {'c->b':>6} {'b->c':>6} {'c->ab':>8} "
          f"{'cos(c,b)':>9} {'cos(c,c)':>9} {'cos(c,b other)':>15}")
    for k, i in enumerate(range(1, 5)):
        yc = add[f"carry_in_{i}"].to_numpy()
        yb = sub[f"borrow_{i - 1}"].to_numpy()
        yab = sub[f"ab_borrow_{i - 1}"].to_numpy()
        other = sub[f"borrow_{i % 4}"].to_numpy()  # the borrow into another column
        xa, xs = x_add[:, k], x_sub[:, k]  # [site, n, d]
        scores, carry, borrow = _transfer(xa, yc, xs, yb, tr, te)
        to_ab = carry.score(xs[:, te], yab[te])
        c1 = LinearProbe().fit(xa[:, :half], yc[:half]).coef_[:, 0]
        c2 = LinearProbe().fit(xa[:, half:], yc[half:]).coef_[:, 0]
        bo = LinearProbe().fit(xs[:, tr], other[tr]).coef_[:, 0]
        for s, label in enumerate(labels):
            cc, cb = carry.coef_[s, 0], borrow.coef_[s, 0]
            print(f"{i:<7} {label:<8} " + " ".join(f"{v[s]:6.3f}" for v in scores) + f" {to_ab[s]:8.3f}"
                  + f" {_cos(cc, cb):9.3f} {_cos(c1[s], c2[s]):9.3f} {_cos(cc, bo[s]):15.3f}")


def column_table(add, x_add, sub, x_sub, labels, tr, te, first: int) -> None:
    """At b_j's token (position 10 - j, ``x_*[:, first + 3 - j]``), where column j's digits meet:
    make-carry SC_j on + prompts against borrow-one MB_j and greater-than GT_j on - prompts."""
    print(f"\n{'column':<7} {'site':<8} {'SC':>6} {'MB':>6} {'SC->MB':>7} {'MB->SC':>7} {'SC->GT':>7} "
          f"{'cos(SC,MB)':>11}")
    for j in range(4):
        k = first + 3 - j
        xa, xs = x_add[:, k], x_sub[:, k]
        yc, ym, yg = (frame[f"{name}_{j}"].to_numpy() for frame, name in ((add, "SC"), (sub, "MB"), (sub, "GT")))
        scores, sc, mb = _transfer(xa, yc, xs, ym, tr, te)
        to_gt = sc.score(xs[:, te], yg[te])
        for s, label in enumerate(labels):
            print(f"{j:<7} {label:<8} " + " ".join(f"{v[s]:6.3f}" for v in scores[:2])
                  + " ".join(f"{v[s]:8.3f}" for v in scores[2:]) + f" {to_gt[s]:7.3f}"
                  + f" {_cos(sc.coef_[s, 0], mb.coef_[s, 0]):11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="zoo:addsub-5d")
    parser.add_argument("--n", type=int, default=2000, help="prompts per operator")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    sites, labels = resid_sites(model)
    positions = [16 - i for i in range(1, 5)] + [7, 8, 9, 10]  # the digits' positions, then b_3..b_0
    add, x_add = _streams(model, "add", args.n, args.seed, positions, sites)
    sub, x_sub = _streams(model, "sub", args.n, args.seed + 1, positions, sites)
    tr, te = np.arange(3 * args.n // 4), np.arange(3 * args.n // 4, args.n)
    print(f"{args.model}: {args.n} prompts per operator, {len(tr)} train / {len(te)} held out")
    carry_borrow_table(add, x_add, sub, x_sub, labels, tr, te)
    column_table(add, x_add, sub, x_sub, labels, tr, te, first=4)


if __name__ == "__main__":
    main()
