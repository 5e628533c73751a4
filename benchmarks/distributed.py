"""Benchmark: a patching sweep run serially and sharded over Ray workers, in one process.

A sweep of every neuron (``--kind mlp_post``, all positions at once; denoising, logit
difference) of ``zoo:add-5d`` over ``--pairs`` clean/corrupt pairs in batches of
``--batch``. The serial run and every Ray worker use one torch thread (results equal bit
for bit only at equal thread counts; on a 2-core machine one thread per worker is also the
fast setting). The Ray instance is started first (not timed); the Ray time includes each
worker loading its model once. Prints

    workers=<n> serial_s=<t> ray_s=<t> speedup=<x> identical=<bool>

Absolute times on a shared machine are noise; the ratio measured side by side is the number.

    python benchmarks/distributed.py [--workers 2] [--pairs 8192] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from arithinterp.distributed import RayExecutor
from arithinterp.methods import patch_activations
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, make_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--model", default="zoo:add-5d")
    parser.add_argument("--kind", default="mlp_post", help="site kind swept (default: every neuron)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model(args.model)
    prompts = generate(TaskSpec(operation="add", digits=5, format="fixed", n=args.pairs, seed=0))
    pairs = make_pairs(prompts, "operand_b", seed=0)
    options = dict(kind=args.kind, per_position=False, batch_size=args.batch, n_boot=200, progress=False)

    executor = RayExecutor(num_workers=args.workers, threads=1)
    try:
        clock = time.perf_counter()
        serial = patch_activations(model, pairs, **options)
        serial_s = time.perf_counter() - clock
        clock = time.perf_counter()
        sharded = patch_activations(model, pairs, executor=executor, **options)
        ray_s = time.perf_counter() - clock
    finally:
        executor.close()
    identical = bool(np.array_equal(serial.values.values, sharded.values.values)
                     and all(np.array_equal(serial.extras[k].values, sharded.extras[k].values)
                             for k in serial.extras))
    print(f"{args.model}: {len(pairs)} pairs, {serial.values.size} cells, batches of {args.batch}")
    print(f"workers={args.workers} serial_s={serial_s:.1f} ray_s={ray_s:.1f} "
          f"speedup={serial_s / ray_s:.2f} identical={identical}")


if __name__ == "__main__":
    main()
