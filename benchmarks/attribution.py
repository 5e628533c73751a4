"""Benchmark: attribution patching (AtP, EAP-IG) against the exact patching sweep.

On a zoo model (default ``zoo:add-5d``), for clean/corrupt pairs that change
one operand digit, it runs in one process:

- the exact sweep with the fast engine and with the literal engine,
- attribution patching (one forward + one backward per batch),
- EAP-IG with 8 steps,

and prints each one's time, the time ratios, and the Spearman correlation and
top-10 overlap of each approximation with the exact sweep. Absolute times on
a shared machine are noise; read the ratios.

    python benchmarks/attribution.py [--model zoo:add-5d] [--n 32] [--kind attn_head]
"""

from __future__ import annotations

import argparse
import time

from arithinterp.methods.attribution import attribution_patch, compare_with_exact
from arithinterp.methods.patching import patch_activations
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, make_pairs


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:add-5d")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--kind", default="attn_head")
    parser.add_argument("--column", type=int, default=2)
    args = parser.parse_args()

    model = load_model(args.model)
    prompts = generate(TaskSpec(operation="add", digits=5, format="fixed", n=args.n, seed=0,
                                sampling="balance_classes"))
    pairs = make_pairs(prompts, "digit", column=args.column)
    common = dict(kind=args.kind, progress=False, n_boot=100, batch_size=args.n)

    t_fast, exact = timed(lambda: patch_activations(model, pairs, engine="fast", **common))
    t_literal, _ = timed(lambda: patch_activations(model, pairs, engine="literal", **common))
    t_atp, atp = timed(lambda: attribution_patch(model, pairs, method="atp", **common))
    t_ig, ig = timed(lambda: attribution_patch(model, pairs, method="ig", ig_steps=8, **common))

    cells = int(exact.values.size)
    print(f"model {args.model}, {args.n} pairs (digit column {args.column}), {args.kind} x pos: {cells} cells")
    print(f"{'method':<22} {'seconds':>8} {'vs fast exact':>14} {'vs literal':>11} {'spearman':>9} {'top-10':>7}")
    print(f"{'exact (literal)':<22} {t_literal:>8.2f} {t_literal / t_fast:>13.1f}x {1.0:>10.1f}x {'1':>9} {'1':>7}")
    print(f"{'exact (fast engine)':<22} {t_fast:>8.2f} {1.0:>13.1f}x {t_fast / t_literal:>10.2f}x {'1':>9} {'1':>7}")
    for name, t, res in (("attribution (AtP)", t_atp, atp), ("EAP-IG (8 steps)", t_ig, ig)):
        cmp = compare_with_exact(res, exact, k=10)
        print(f"{name:<22} {t:>8.2f} {t / t_fast:>13.2f}x {t / t_literal:>10.2f}x "
              f"{cmp['spearman']:>9.3f} {cmp['top_k_overlap']:>7.2f}")


if __name__ == "__main__":
    main()
