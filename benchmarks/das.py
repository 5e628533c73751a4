"""Benchmark: DAS on one variable at one site of ``zoo:add-5d``, with its controls.

Trains a ``--dim``-dimensional DAS subspace for ``--variable`` at ``--site`` (a site label with a
position, e.g. ``"L1 pre@11"``: the stream entering block 1 at ``=``, which predicts the answer's
first digit, the carry out of the top column) on ``--n-pairs`` training pairs for ``--steps``
Adam steps, by gradient through the model on one torch thread; then scores held-out IIA of the
learned subspace, a random subspace of the same dimension, the full vector and the probe
direction. It prints the wall time of the whole call (pairs, tokenization, source caches,
training, the four held-out evaluations) and the IIAs. The target is <= 60 s on an idle
2-core CPU.

    python benchmarks/das.py [--model zoo:add-5d] [--variable carry_in_5] [--site "L1 pre@11"]
        [--dim 1] [--steps 300] [--n-pairs 1024] [--backend transformer_lens]

Measured numbers are in docs/methods/causal-variables.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from arithinterp.methods import das
from arithinterp.models import Site, load_model
from arithinterp.tasks import TaskSpec, causal_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:add-5d")
    parser.add_argument("--backend", default="transformer_lens")
    parser.add_argument("--variable", default="carry_in_5")
    parser.add_argument("--site", default="L1 pre@11")
    parser.add_argument("--dim", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n-pairs", type=int, default=1024)
    parser.add_argument("--digits", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model, args.backend)
    cm = causal_model(TaskSpec(operation="add", digits=args.digits, format="fixed"))
    start = time.perf_counter()
    res = das(model, cm, variable=args.variable, site=Site.from_label(args.site), dim=args.dim, steps=args.steps,
              n_pairs=args.n_pairs)
    seconds = time.perf_counter() - start
    print(f"{args.model} ({args.backend}) {res.variable} at {res.site}, dim {res.dim}, {args.steps} steps, "
          f"{res.n_train} training / {res.n_test} held-out pairs: {seconds:.1f} s")
    for name, value in res.values.to_series().items():
        print(f"  IIA {name:<16} {value:.3f}")
    print(f"  IIA train (das)     {res.iia_train:.3f}")


if __name__ == "__main__":
    main()
